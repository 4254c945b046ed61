/* SPDX-License-Identifier: MIT */
/* A small program that knows nothing about sluice and leaks: the target of
 * the LD_PRELOAD test. leak_some() keeps 64 bytes per request in a global
 * list; handle_request() frees everything else it allocates. */
#include <stdlib.h>
#include <string.h>

struct node {
  struct node *next;
  char data[56];
};

static struct node *kept;

__attribute__((noinline)) static void leak_some(int i) {
  struct node *n = malloc(sizeof *n);
  memset(n->data, i, sizeof n->data);
  n->next = kept;
  kept = n;
}

__attribute__((noinline)) static void handle_request(int i) {
  char *scratch = malloc(4096);
  memset(scratch, i, 4096);
  leak_some(i);
  free(scratch);
}

int main(void) {
  for (int i = 0; i < 1000; i++) handle_request(i);
  return kept ? 0 : 1;
}
