//! What the last successful object sync left, so that a pass woken only by the cluster's
//! pods (or a rolling-update poll, a turn, a node change) does not read every child object
//! again: nothing it builds from has changed. The manifest (any event of the object,
//! including the periodic SYNC), a sync asked for by hand and a new operator configuration
//! make the next pass read and write the objects again. At fleet scale this is most of
//! the API server's load: a cluster coming up wakes its task once per pod change.
use std::sync::Arc;

use pgop_common::config::OperatorConfig;

use crate::pure::builders::restart::TemplateHashes;

#[derive(Debug, Clone)]
struct Entry {
    config: Arc<OperatorConfig>,
    template: TemplateHashes,
    problems: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ObjectsMemo(Option<Entry>);

impl ObjectsMemo {
    /// Something the objects are built from changed (see `Input::voids_objects`).
    pub fn void(&mut self) {
        self.0 = None;
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

    fn hashes() -> TemplateHashes {
        TemplateHashes {
            restart: "r1".into(),
            images: "i1".into(),
            lazy_images: false,
        }
    }

    #[test]
    fn recalled_only_for_the_same_configuration_until_voided() {
        let config = Arc::new(OperatorConfig::default());
        let mut memo = ObjectsMemo::default();
        assert!(memo.recall(&config).is_none());
        memo.remember(&config, &hashes(), &["volumes are never shrunk".into()]);
        let (template, problems) = memo.recall(&config).expect("remembered");
        assert_eq!(template, hashes());
        assert_eq!(problems, vec!["volumes are never shrunk".to_string()]);
        assert!(
            memo.recall(&Arc::new(OperatorConfig::default())).is_none(),
            "a new configuration, even an equal one"
        );
        memo.void();
        assert!(memo.recall(&config).is_none());
        memo.remember(&config, &hashes(), &[]);
        memo.forget();
        assert!(memo.recall(&config).is_none());
    }
}
