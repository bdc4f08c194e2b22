/*
 * The pod network shim, preloaded (LD_PRELOAD) into the containers of images the local kubelet
 * runs as the workspace's binaries.
 *
 * In a real pod a process binding 0.0.0.0 listens on its own network namespace's addresses:
 * two replicas of one Deployment can both listen on :50051. The local kubelet's pods share the
 * machine's network namespace (each has only its own loopback address), so a wildcard IPv4
 * bind here becomes a bind to the pod's address, PGOP_POD_IP. Everything else is passed on.
 * Written in C because it must interpose libc's own `bind` symbol.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static bind_fn real_bind;
  if (!real_bind) {
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
  }
  if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    const char *pod_ip = getenv("PGOP_POD_IP");
    struct in_addr ip;
    if (in->sin_addr.s_addr == htonl(INADDR_ANY) && pod_ip && inet_pton(AF_INET, pod_ip, &ip) == 1) {
      struct sockaddr_in own = *in;
      own.sin_addr = ip;
      return real_bind(fd, (const struct sockaddr *)&own, sizeof own);
    }
  }
  return real_bind(fd, addr, len);
}
