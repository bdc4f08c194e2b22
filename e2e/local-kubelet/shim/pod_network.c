/*
 * The pod network shim, preloaded (LD_PRELOAD) into the containers of images the local kubelet
 * runs as the workspace's binaries.
 *
 * In a real pod a process binding 0.0.0.0 listens on its own network namespace's addresses:
 * two replicas of one Deployment can both listen on :50051. The local kubelet's pods share the
 * machine's network namespace (each has only its own loopback address), so a wildcard listen
 * here becomes one on the pod's address, LOCAL_KUBELET_POD_IP: IPv4 0.0.0.0 becomes it, IPv6
 * :: its IPv4-mapped form. Binds to port 0 (a client choosing its source port) and every
 * other call are passed on. Written in C because it must interpose libc's own `bind`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static bind_fn real_bind;
static int have_pod_ip;
static struct in_addr pod_ip;

/* Resolved once, before the program's own threads exist. */
__attribute__((constructor)) static void pod_network_init(void) {
  real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
  const char *ip = getenv("LOCAL_KUBELET_POD_IP");
  have_pod_ip = ip && inet_pton(AF_INET, ip, &pod_ip) == 1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  if (!real_bind) {
    errno = ENOSYS;
    return -1;
  }
  if (have_pod_ip && addr && addr->sa_family == AF_INET &&
      len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    if (in->sin_addr.s_addr == htonl(INADDR_ANY) && in->sin_port != 0) {
      struct sockaddr_in own = *in;
      own.sin_addr = pod_ip;
      return real_bind(fd, (const struct sockaddr *)&own, sizeof own);
    }
  }
  if (have_pod_ip && addr && addr->sa_family == AF_INET6 &&
      len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) && in6->sin6_port != 0) {
      struct sockaddr_in6 own = *in6;
      memset(&own.sin6_addr, 0, sizeof own.sin6_addr);
      own.sin6_addr.s6_addr[10] = 0xff;
      own.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&own.sin6_addr.s6_addr[12], &pod_ip, 4);
      return real_bind(fd, (const struct sockaddr *)&own, sizeof own);
    }
  }
  return real_bind(fd, addr, len);
}
