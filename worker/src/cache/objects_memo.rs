//! What the last successful object sync left, so that a pass woken only by the cluster's
//! pods (or a rolling-update poll, a turn, a node change) does not read every child object
//! again: nothing it builds from has changed. The manifest (any event of the object,
//! including the periodic SYNC), a sync asked for by hand and a new operator configuration
//! make the next pass read and write the objects again. At fleet scale this is most of
//! the API server's load: a cluster coming up wakes its task once per pod change.
use std::sync::Arc;

use pgop_common::config::OperatorConfig;

use crate::builders::restart::TemplateHashes;
use crate::cluster::Input;

#[derive(Debug, Clone)]
struct Entry {
    config: Arc<OperatorConfig>,
    template: TemplateHashes,
    problems: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ObjectsMemo(Option<Entry>);

impl ObjectsMemo {
    /// What `input` means for the memo: events of the object itself, of the objects pgop
    /// writes for it and sync requests void it; pods and turns do not.
    pub fn take(&mut self, input: &Input) {
        match input {
            Input::Object(_) | Input::SyncRequest | Input::Child(_) => self.0 = None,
            Input::Pod(_) | Input::TurnGranted => {}
        }
    }

    /// The objects were brought in sync with `config` (and the manifest in hand).
    pub fn remember(
        &mut self,
        config: &Arc<OperatorConfig>,
        template: &TemplateHashes,
        problems: &[String],
    ) {
        self.0 = Some(Entry {
            config: config.clone(),
            template: template.clone(),
            problems: problems.to_vec(),
        });
    }

    /// A failed sync leaves the objects in an unknown state.
    pub fn forget(&mut self) {
        self.0 = None;
    }

    /// The pod template hashes and refusals of the last sync, when it still holds for
    /// `config`.
    pub fn recall(&self, config: &Arc<OperatorConfig>) -> Option<(TemplateHashes, Vec<String>)> {
        self.0
            .as_ref()
            .filter(|e| Arc::ptr_eq(&e.config, config))
            .map(|e| (e.template.clone(), e.problems.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgop_proto::v1::{ClusterEvent, PodState};

    fn hashes() -> TemplateHashes {
        TemplateHashes {
            restart: "r1".into(),
            images: "i1".into(),
            lazy_images: false,
        }
    }

    #[test]
    fn recalled_only_for_the_same_configuration_and_until_the_object_changes() {
        let config = Arc::new(OperatorConfig::default());
        let cases: Vec<(&str, Vec<Input>, Arc<OperatorConfig>, bool)> = vec![
            ("nothing happened", vec![], config.clone(), true),
            (
                "pods and turns",
                vec![Input::Pod(PodState::default()), Input::TurnGranted],
                config.clone(),
                true,
            ),
            (
                "an event of the object",
                vec![
                    Input::Pod(PodState::default()),
                    Input::Object(ClusterEvent::default()),
                ],
                config.clone(),
                false,
            ),
            (
                "one of its objects changed",
                vec![Input::Child(Default::default())],
                config.clone(),
                false,
            ),
            (
                "a sync asked for",
                vec![Input::SyncRequest],
                config.clone(),
                false,
            ),
            (
                "a new configuration, even an equal one",
                vec![],
                Arc::new(OperatorConfig::default()),
                false,
            ),
        ];
        for (name, inputs, asked_with, recalled) in cases {
            let mut memo = ObjectsMemo::default();
            memo.remember(&config, &hashes(), &["volumes are never shrunk".into()]);
            for input in &inputs {
                memo.take(input);
            }
            let got = memo.recall(&asked_with);
            assert_eq!(got.is_some(), recalled, "{name}");
            if let Some((template, problems)) = got {
                assert_eq!(template, hashes(), "{name}");
                assert_eq!(problems, vec!["volumes are never shrunk".to_string()]);
            }
        }
        let mut memo = ObjectsMemo::default();
        memo.remember(&config, &hashes(), &[]);
        memo.forget();
        assert!(memo.recall(&config).is_none());
        assert!(ObjectsMemo::default().recall(&config).is_none());
    }
}
