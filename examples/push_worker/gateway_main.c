/* SPDX-License-Identifier: MIT */
/* push-gateway: the push-gateway stand-in as a program (see gateway.h).
 *
 *   push-gateway [--addr HOST:PORT] [--latency-ms N] [--jitter-ms N]
 *                [--error-rate P] [--error-4xx-share F] [--api-key KEY]
 *                [--url-file PATH]
 *
 * Prints "push-gateway: listening on URL" once ready (and writes URL to
 * --url-file), the counters as JSON on SIGUSR1, and again when SIGTERM or
 * SIGINT stops it. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--addr HOST:PORT] [--latency-ms N] [--jitter-ms N]\n"
          "          [--error-rate P] [--error-4xx-share F] [--api-key KEY]\n"
          "          [--url-file PATH]\n",
          argv0);
}

int main(int argc, char **argv) {
  pw_gateway_opts o = {.addr = "127.0.0.1:0"};
  const char *url_file = NULL;
  static const struct option longopts[] = {
      {"addr", required_argument, 0, 'a'},
      {"latency-ms", required_argument, 0, 'l'},
      {"jitter-ms", required_argument, 0, 'j'},
      {"error-rate", required_argument, 0, 'e'},
      {"error-4xx-share", required_argument, 0, 'f'},
      {"api-key", required_argument, 0, 'k'},
      {"url-file", required_argument, 0, 'u'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (ch) {
      case 'a': o.addr = optarg; break;
      case 'l': o.latency_ms = (unsigned)strtoul(optarg, NULL, 10); break;
      case 'j': o.jitter_ms = (unsigned)strtoul(optarg, NULL, 10); break;
      case 'e': o.error_rate = strtod(optarg, NULL); break;
      case 'f': o.error_4xx_share = strtod(optarg, NULL); break;
      case 'k': o.api_key = optarg; break;
      case 'u': url_file = optarg; break;
      case 'h': usage(argv[0]); return 0;
      default: usage(argv[0]); return 2;
    }
  }
  if (optind < argc || o.error_rate < 0 || o.error_rate > 1 ||
      o.error_4xx_share < 0 || o.error_4xx_share > 1) {
    usage(argv[0]);
    return 2;
  }
  /* Signals go to this thread only: the gateway thread starts with them
   * blocked, and sigwait() takes them here. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  pw_gateway *g;
  if (pw_gateway_start(&o, &g)) return 1;
  char url[128], js[512];
  pw_gateway_url(g, url, sizeof(url));
  if (url_file) {
    FILE *f = fopen(url_file, "w");
    if (!f || fprintf(f, "%s\n", url) < 0 || fclose(f)) {
      fprintf(stderr, "push-gateway: cannot write %s\n", url_file);
      pw_gateway_stop(g);
      return 1;
    }
  }
  printf("push-gateway: listening on %s (latency %u+%u ms, error rate %.3f)\n",
         url, o.latency_ms, o.jitter_ms, o.error_rate);
  fflush(stdout);
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig)) break;
    pw_gateway_stats s;
    pw_gateway_stats_get(g, &s);
    printf("push-gateway: %s\n", pw_gateway_stats_json(&s, js, sizeof(js)));
    fflush(stdout);
    if (sig != SIGUSR1) break;
  }
  pw_gateway_stop(g);
  return 0;
}
