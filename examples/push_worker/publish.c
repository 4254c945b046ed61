/* SPDX-License-Identifier: MIT */
/* push-publish: declare the push worker's queues and publish a batch of
 * jobs (with publisher confirms), optionally at a steady rate.
 *
 *   push-publish [--uri URI] [--queue NAME] [--count N] [--first I]
 *                [--mix "probe=10,bad=2,forbidden=1,..."] [--rate PER_S]
 *                [--fresh]
 *
 * Kinds in a mix (percentages; "ok" gets the rest): probe, bad (invalid
 * JSON), missing (no token), badtype (a number where a string belongs),
 * forbidden (gateway 403), gone (gateway 410), fail (gateway 500). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobs.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "push-publish: %s: %s (%s)\n", what, sluice_strerror(rc),
          sluice_err_name(rc));
  exit(1);
}

int main(int argc, char **argv) {
  const char *uri = "amqp://guest:guest@127.0.0.1:5672/";
  const char *queue = "push.jobs", *mix_s = "";
  uint64_t count = 1000, first = 0;
  double rate = 0;
  int fresh = 0;
  static const struct option lo[] = {{"uri", required_argument, 0, 'u'},
                                     {"queue", required_argument, 0, 'q'},
                                     {"count", required_argument, 0, 'n'},
                                     {"first", required_argument, 0, 'f'},
                                     {"mix", required_argument, 0, 'm'},
                                     {"rate", required_argument, 0, 'r'},
                                     {"fresh", no_argument, 0, 'F'},
                                     {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (ch) {
      case 'u': uri = optarg; break;
      case 'q': queue = optarg; break;
      case 'n': count = strtoull(optarg, NULL, 10); break;
      case 'f': first = strtoull(optarg, NULL, 10); break;
      case 'm': mix_s = optarg; break;
      case 'r': rate = strtod(optarg, NULL); break;
      case 'F': fresh = 1; break;
      default:
        fprintf(stderr,
                "usage: %s [--uri URI] [--queue NAME] [--count N] [--first I] "
                "[--mix SPEC] [--rate PER_S] [--fresh]\n",
                argv[0]);
        return 2;
    }
  }
  pw_mix mix;
  char err[160];
  if (pw_mix_parse(mix_s, &mix, err, sizeof(err))) {
    fprintf(stderr, "push-publish: %s\n", err);
    return 2;
  }
  sluice_publisher_opts po = {.uri = uri,
                              .connection_name = "push-publish",
                              .max_outstanding = 4096};
  sluice_publisher *p;
  int rc = sluice_publisher_new(&po, &p);
  if (rc) die("connect", rc);
  char dlq[256];
  sluice_queue_decl qd, dd;
  pw_dlq_name(queue, dlq, sizeof(dlq));
  pw_queue_decl(queue, &qd);
  pw_dlq_decl(dlq, &dd);
  if (fresh) {
    sluice_publisher_delete_queue(p, queue, NULL);
    sluice_publisher_delete_queue(p, dlq, NULL);
  }
  if ((rc = sluice_publisher_declare_queue(p, &dd))) die("declare", rc);
  if ((rc = sluice_publisher_declare_queue(p, &qd))) die("declare", rc);

  double t0 = now_s();
  /* At a rate: publish in small steps on an absolute schedule. */
  uint64_t step = rate > 0 ? (rate >= 100 ? (uint64_t)(rate / 100) : 1) : count;
  for (uint64_t done = 0; done < count;) {
    uint64_t n = count - done < step ? count - done : step;
    if ((rc = pw_publish_jobs(p, queue, &mix, first + done, n)))
      die("publish", rc);
    done += n;
    if (rate > 0 && done < count) {
      double due = t0 + (double)done / rate;
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
      if (due > now) {
        double d = due - now;
        struct timespec sl = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        while (nanosleep(&sl, &sl) && errno == EINTR) {
        }
      }
    }
  }
  sluice_publish_report rep;
  rc = sluice_publisher_wait(p, &rep);
  double t1 = now_s();
  if (rc) die("confirms", rc);
  unsigned kinds[PW_JOB_KINDS_] = {0};
  for (uint64_t i = first; i < first + count; i++)
    kinds[pw_mix_kind(&mix, i)]++;
  printf("push-publish: %" PRIu64 " jobs to %s in %.2f s, %" PRIu64
         " confirmed (",
         rep.published, queue, t1 - t0, rep.confirmed);
  const char *sep = "";
  for (int k = 0; k < PW_JOB_KINDS_; k++)
    if (kinds[k]) {
      printf("%s%u %s", sep, kinds[k], pw_kind_name((pw_kind)k));
      sep = ", ";
    }
  printf(")\n");
  sluice_publisher_free(p);
  return 0;
}
