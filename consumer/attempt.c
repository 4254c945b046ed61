/* SPDX-License-Identifier: MIT */
/* A connection attempt, off the loop thread. rabbitmq-c 0.11 has no
 * non-blocking TCP connect for its SSL socket, no non-blocking TLS
 * handshake and no non-blocking login: each is a loop of poll() calls
 * inside the library. So an attempt runs on a thread of its own: it walks
 * the cluster's nodes (TCP or TLS, login, the two channels, basic.qos),
 * then declares the topology and subscribes, and hands the finished
 * connection to the loop thread, which has not touched the broker in the
 * meantime (a rabbitmq-c connection may change threads as long as one
 * thread uses it at a time; the attempt's mutex orders the hand-over).
 * The loop only starts an attempt, and picks up its result when the
 * attempt wakes it: it never waits for one. docs/architecture.md,
 * "Connecting".
 *
 * An attempt reads only what it was given: copies of the URIs, the TLS
 * settings and the options, and, for recovery, the consumer's declarations
 * as they were when it started (the nodes of that list never change once
 * linked). What the application declares or subscribes to meanwhile is sent
 * by the loop thread at the hand-over.
 *
 * Cancelling (a stop, a free) never waits for the attempt: a flag, an
 * eventfd that sluice's TCP connect polls, and a shutdown() of the socket
 * (conn.c, sluice__cancel) end every wait but two that rabbitmq-c does not
 * expose, the name lookup and the TCP connect of a TLS node. An attempt
 * still in one of them when its consumer is freed is left to finish on its
 * own (within connect_timeout_ms) and frees itself: until then it uses
 * only its copies, and neither logs nor wakes anyone; it is counted, so a
 * program can wait for it before exiting (sluice_consumer_wait_detached()).
 * Recovery, which
 * reads the consumer's declarations, is always interruptible, and free()
 * waits for it to end. */
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "uri.h"

enum { PHASE_NODES, PHASE_RECOVER, PHASE_DONE };

struct sluice__attempt_sub {
  int slot;
  char *queue, *tag;
  int exclusive, priority;
};

struct sluice__attempt {
  sluice__cancel k; /* its mutex guards the fields marked (k) */

  /* what it works from: copies */
  char **uris;    /* in the order to try */
  size_t *idx;    /* each one's index in the consumer's list */
  int *tls_asked; /* each one's, from the consumer; back to it on adopt */
  size_t n;
  char *conn_name;
  sluice__tls_config tls;
  int has_tls;
  sluice__logger user_log; /* the consumer's sink */
  sluice__logger log;      /* the same, silent once orphaned */
  int connect_timeout_ms, rpc_timeout_ms, heartbeat_s, frame_max, rcvbuf;
  int manual, no_ack;
  uint16_t prefetch;
  int probing; /* a probe of refusing nodes: their refusals are DEBUG */
  /* the consumer's declarations, read during recovery only */
  struct sluice__topo **topo;
  size_t n_topo;
  struct sluice__attempt_sub *subs;
  size_t n_subs;

  int phase;    /* (k) */
  int orphaned; /* (k) its consumer is gone: the attempt frees itself */
  int wake_fd;  /* (k) the consumer's eventfd, while not orphaned */
  int threaded;
  pthread_t thread;

  /* the result, the loop's once phase is PHASE_DONE */
  int rc;
  char text[512];
  size_t node; /* index in the consumer's list */
  /* every node refused its TCP connection, the slowest after this long;
   * UINT64_MAX when some node failed otherwise (sluice__policy_refused) */
  uint64_t refused_ms;
  const char *node_uri;
  amqp_connection_state_t conn;
  sluice__link link; /* the last broker close seen */
};

/* ---- its log: the consumer's, until the consumer is gone ----------------- */

static void guarded_log(int level, const char *msg, void *user) {
  sluice__attempt *a = user;
  pthread_mutex_lock(&a->k.mu);
  if (!a->orphaned) sluice__logf(&a->user_log, level, "%s", msg);
  pthread_mutex_unlock(&a->k.mu);
}

/* ---- attempts left behind by a free() ------------------------------------ */

static pthread_once_t detached_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t detached_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t detached_cv;
static unsigned detached_n; /* (detached_mu) */

static void detached_init(void) {
  pthread_condattr_t at;
  pthread_condattr_init(&at);
  pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
  pthread_cond_init(&detached_cv, &at);
  pthread_condattr_destroy(&at);
}

static void detached_add(int d) {
  pthread_once(&detached_once, detached_init);
  pthread_mutex_lock(&detached_mu);
  detached_n += (unsigned)d;
  if (!detached_n) pthread_cond_broadcast(&detached_cv);
  pthread_mutex_unlock(&detached_mu);
}

int sluice_consumer_wait_detached(unsigned timeout_ms) {
  pthread_once(&detached_once, detached_init);
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&detached_mu);
  int e = 0;
  while (detached_n && e != ETIMEDOUT)
    e = pthread_cond_timedwait(&detached_cv, &detached_mu, &until);
  int left = detached_n != 0;
  pthread_mutex_unlock(&detached_mu);
  return left ? SLUICE_ETIMEDOUT : 0;
}

/* ---- creating and freeing ------------------------------------------------ */

static void attempt_free(sluice__attempt *a) {
  if (!a) return;
  if (a->conn) amqp_destroy_connection(a->conn);
  for (size_t i = 0; i < a->n; i++) free(a->uris ? a->uris[i] : NULL);
  free(a->uris);
  free(a->idx);
  free(a->tls_asked);
  free(a->conn_name);
  sluice__tls_config_free(&a->tls);
  for (size_t i = 0; i < a->n_subs; i++) {
    free(a->subs[i].queue);
    free(a->subs[i].tag);
  }
  free(a->subs);
  free(a->topo);
  sluice__cancel_destroy(&a->k);
  free(a);
}

static sluice__attempt *attempt_new(sluice_consumer *c) {
  sluice__attempt *a = calloc(1, sizeof(*a));
  if (!a) return NULL;
  if (sluice__cancel_init(&a->k)) {
    free(a);
    return NULL;
  }
  a->n = c->n_uris;
  a->uris = calloc(a->n, sizeof(*a->uris));
  a->idx = calloc(a->n, sizeof(*a->idx));
  a->tls_asked = calloc(a->n, sizeof(*a->tls_asked));
  if (!a->uris || !a->idx || !a->tls_asked) goto fail;
  for (size_t i = 0; i < a->n; i++) {
    a->idx[i] = sluice__policy_node(&c->policy, i);
    a->tls_asked[i] = c->tls_asked[a->idx[i]];
    if (!(a->uris[i] = sluice__strdup(c->uris[a->idx[i]]))) goto fail;
  }
  if (c->conn_name && !(a->conn_name = sluice__strdup(c->conn_name))) goto fail;
  if (c->has_tls) {
    if (sluice__tls_config_copy(&a->tls, &c->tls)) goto fail;
    a->has_tls = 1;
  }
  a->user_log = c->log;
  a->log = (sluice__logger){guarded_log, a, c->log.level, c};
  a->connect_timeout_ms = c->o.connect_timeout_ms;
  a->rpc_timeout_ms = c->o.rpc_timeout_ms;
  a->heartbeat_s = c->o.heartbeat_s < 0 ? 0 : c->o.heartbeat_s;
  a->frame_max = c->o.frame_max;
  /* In autoAck mode what waits in the kernel's receive buffer was settled
   * by the broker: keep it small (Linux autotunes it up to megabytes). */
  a->rcvbuf = c->o.socket_rcvbuf;
  if (a->rcvbuf == 0 && c->o.ack_mode == SLUICE_ACK_AUTO) a->rcvbuf = 128 << 10;
  a->manual = c->o.ack_mode == SLUICE_ACK_MANUAL;
  a->no_ack = !a->manual;
  a->prefetch = c->o.prefetch;
  a->probing = c->probing;
  a->refused_ms = UINT64_MAX;

  size_t nt = 0;
  for (struct sluice__topo *t = c->topo; t; t = t->next) nt++;
  if (nt && !(a->topo = calloc(nt, sizeof(*a->topo)))) goto fail;
  for (struct sluice__topo *t = c->topo; t; t = t->next)
    a->topo[a->n_topo++] = t;
  a->subs = calloc(SLUICE__MAX_SUBS, sizeof(*a->subs));
  if (!a->subs) goto fail;
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) {
    const struct sluice__sub *s = &c->subs[i];
    if (!s->used || s->cancelled) continue;
    struct sluice__attempt_sub *as = &a->subs[a->n_subs++];
    as->slot = i;
    as->exclusive = s->exclusive;
    as->priority = s->priority;
    if (!(as->queue = sluice__strdup(s->queue)) ||
        !(as->tag = sluice__strdup(s->tag)))
      goto fail;
  }
  a->wake_fd = c->wake_fd;
  return a;
fail:
  attempt_free(a);
  return NULL;
}

/* ---- the attempt (its own thread, or the caller's for connect()) --------- */

static int open_channel(sluice__attempt *a, amqp_channel_t ch) {
  amqp_channel_open(a->conn, ch);
  uint16_t code;
  char text[256];
  int rc = sluice__reply_to_err(amqp_get_rpc_reply(a->conn), &code, text,
                                sizeof(text));
  sluice__link_note(&a->link, code, text);
  if (rc)
    snprintf(a->text, sizeof(a->text), "channel.open %u: %s", (unsigned)ch,
             text[0] ? text : sluice_strerror(rc));
  return rc;
}

/* Connect to node `i`, open the channels, set the prefetch. `*refused_ms`
 * as in sluice__open_args. */
static int open_node(sluice__attempt *a, size_t i, uint64_t *refused_ms) {
  sluice__open_args args = {.uri = a->uris[i],
                            .conn_name = a->conn_name,
                            .connect_timeout_ms = a->connect_timeout_ms,
                            .rpc_timeout_ms = a->rpc_timeout_ms,
                            .heartbeat_s = a->heartbeat_s,
                            .frame_max = a->frame_max,
                            .tls = a->has_tls ? &a->tls : NULL,
                            .log = &a->log,
                            .refused_ms = refused_ms,
                            .tls_asked = &a->tls_asked[i],
                            .cancel = &a->k};
  uint16_t code;
  int rc = sluice__amqp_open(&args, &a->conn, &code, a->text, sizeof(a->text));
  sluice__link_note(&a->link, code, a->text);
  if (rc) return rc;
  int fd = amqp_get_sockfd(a->conn);
  if (a->rcvbuf > 0 &&
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &a->rcvbuf, sizeof(a->rcvbuf)))
    sluice__logf(&a->log, SLUICE_LOG_WARN, "SO_RCVBUF %d: %s", a->rcvbuf,
                 strerror(errno));
  if (!(rc = open_channel(a, SLUICE__CH_MAIN)) &&
      !(rc = open_channel(a, SLUICE__CH_TOPOLOGY)) && a->manual) {
    amqp_basic_qos(a->conn, SLUICE__CH_MAIN, 0, a->prefetch, 0);
    char text[256];
    rc = sluice__reply_to_err(amqp_get_rpc_reply(a->conn), &code, text,
                              sizeof(text));
    sluice__link_note(&a->link, code, text);
    if (rc)
      snprintf(a->text, sizeof(a->text), "basic.qos: %s",
               text[0] ? text : sluice_strerror(rc));
  }
  if (rc) {
    sluice__cancel_untrack(&a->k);
    amqp_destroy_connection(a->conn);
    a->conn = NULL;
  }
  return rc;
}

/* The URI without its password, for the log. */
static void uri_for_log(const char *uri, char *out, size_t len) {
  const char *scheme = strstr(uri, "://");
  const char *auth = scheme ? scheme + 3 : uri;
  const char *end = auth + strcspn(auth, "/");
  const char *at = NULL;
  for (const char *p = auth; p < end; p++)
    if (*p == '@') at = p;
  const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  if (colon) snprintf(out, len, "%.*s:***%s", (int)(colon - uri), uri, at);
  else snprintf(out, len, "%s", uri);
}

/* Walk the nodes, in the policy's order, until one takes the connection. */
static int walk_nodes(sluice__attempt *a) {
  int rc = SLUICE_ECONNECT, retryable = 0;
  char report[512] = "";
  uint64_t slowest = 0; /* the slowest refusal, while every node refused */
  for (size_t i = 0; i < a->n; i++) {
    if (sluice__cancelled(&a->k)) return SLUICE_ECANCELED;
    a->text[0] = '\0';
    uint64_t refused_ms = UINT64_MAX;
    int node_rc = open_node(a, i, &refused_ms);
    if (node_rc == 0) {
      a->node = a->idx[i];
      a->node_uri = a->uris[i];
      return 0;
    }
    if (node_rc == SLUICE_ECANCELED || sluice__cancelled(&a->k))
      return SLUICE_ECANCELED;
    if (refused_ms == UINT64_MAX) slowest = UINT64_MAX;
    else if (slowest != UINT64_MAX && refused_ms > slowest)
      slowest = refused_ms;
    /* A probe finding the node still down is expected: not a warning. */
    int level = !sluice__retryable(node_rc)              ? SLUICE_LOG_ERROR
                : node_rc != SLUICE_ECONNECT             ? SLUICE_LOG_WARN
                : a->probing && refused_ms != UINT64_MAX ? SLUICE_LOG_DEBUG
                                                         : SLUICE_LOG_WARN;
    sluice__logf(&a->log, level, "%s (%s)", a->text, sluice_strerror(node_rc));
    /* What the attempt reports: the last node's error, unless an earlier
     * node failed in a way that may pass (down, restarting) and this one
     * for good (its certificate): that one is worth retrying. */
    if (sluice__retryable(node_rc) || !retryable) {
      rc = node_rc;
      snprintf(report, sizeof(report), "%s", a->text);
    }
    if (sluice__retryable(node_rc)) retryable = 1;
    /* Credentials and vhosts are the same on every node of a cluster:
     * trying the next one would only repeat the refusal. */
    if (sluice__err_class(node_rc) & SLUICE__ERR_EVERY_NODE) {
      rc = node_rc;
      snprintf(report, sizeof(report), "%s", a->text);
      break;
    }
  }
  snprintf(a->text, sizeof(a->text), "%s", report);
  if (a->n) a->refused_ms = slowest;
  return rc;
}

/* Declare the topology again and subscribe, as the consumer had it when
 * the attempt started. */
static const struct sluice__topo *declared_queue(const sluice__attempt *a,
                                                 const char *name) {
  for (size_t i = 0; i < a->n_topo; i++)
    if (a->topo[i]->kind == SLUICE__TOPO_QUEUE && !a->topo[i]->passive &&
        strcmp(a->topo[i]->name, name) == 0)
      return a->topo[i];
  return NULL;
}

/* Subscribe to the i-th subscription's queue. An auto-delete queue the
 * recovery has just declared can vanish before the subscription: the
 * broker deletes it once the dead connection's consumer is gone, which may
 * happen after the declaration found it still there. A queue declared here
 * that is NOT_FOUND is declared again and the subscription retried (three
 * times, quietly); a queue that only the subscription names stays a
 * NOT_FOUND that ends the run. */
static int subscribe(sluice__attempt *a, size_t i) {
  const struct sluice__attempt_sub *sb = &a->subs[i];
  const struct sluice__topo *q = declared_queue(a, sb->queue);
  const sluice__logger *lg = a->link.log;
  sluice__logger quiet = *lg;
  quiet.level = 0; /* nothing */
  for (int tries = 0;; tries++) {
    int again = q && tries < 3;
    a->link.log = again ? &quiet : lg;
    int rc = sluice__consume_send(&a->link, sb->queue, sb->tag, a->no_ack,
                                  sb->exclusive, sb->priority);
    a->link.log = lg;
    if (rc != SLUICE_ENOTFOUND || !again) return rc;
    sluice__logf(lg, SLUICE_LOG_INFO,
                 "queue '%s' vanished after its declaration (auto-delete?): "
                 "declared again",
                 sb->queue);
    if ((rc = sluice__topo_send(&a->link, q))) return rc;
  }
}

static int recover(sluice__attempt *a) {
  a->link.conn = a->conn;
  a->link.log = &a->log;
  int rc = 0;
  for (size_t i = 0; !rc && i < a->n_topo; i++)
    rc = sluice__topo_send(&a->link, a->topo[i]);
  for (size_t i = 0; !rc && i < a->n_subs; i++) rc = subscribe(a, i);
  if (rc)
    snprintf(a->text, sizeof(a->text), "recovery: %s%s%s", sluice_strerror(rc),
             a->link.close_text[0] ? ": " : "", a->link.close_text);
  return rc;
}

static void attempt_run(sluice__attempt *a) {
  int rc = walk_nodes(a);
  if (rc == 0) {
    pthread_mutex_lock(&a->k.mu);
    if (a->k.cancelled) rc = SLUICE_ECANCELED;
    else a->phase = PHASE_RECOVER;
    pthread_mutex_unlock(&a->k.mu);
    if (!rc) rc = recover(a);
    if (rc && sluice__cancelled(&a->k)) rc = SLUICE_ECANCELED;
    if (rc) {
      sluice__cancel_untrack(&a->k);
      amqp_destroy_connection(a->conn);
      a->conn = NULL;
    }
  }
  if (rc == SLUICE_ECANCELED) snprintf(a->text, sizeof(a->text), "cancelled");
  /* The connection is handed over: no cancel may shut it down any more. */
  sluice__cancel_untrack(&a->k);
  a->rc = rc;
}

static void *attempt_main(void *arg) {
  sluice__attempt *a = arg;
  attempt_run(a);
  pthread_mutex_lock(&a->k.mu);
  a->phase = PHASE_DONE;
  int orphaned = a->orphaned;
  if (!orphaned) {
    uint64_t one = 1;
    ssize_t w = write(a->wake_fd, &one, sizeof(one));
    (void)w;
  }
  pthread_mutex_unlock(&a->k.mu);
  if (orphaned) {
    int tls = a->has_tls;
    attempt_free(a);
    if (tls) sluice__tls_thread_stop();
    detached_add(-1); /* the last thing it does with sluice's memory */
  }
  return NULL;
}

/* ---- the loop's side ------------------------------------------------------ */

int sluice__attempt_start(sluice_consumer *c) {
  if (c->attempt) return SLUICE_EALREADY;
  sluice__attempt *a = attempt_new(c);
  if (!a) return SLUICE_ENOMEM;
  a->threaded = 1;
  int e = pthread_create(&a->thread, NULL, attempt_main, a);
  if (e) {
    sluice__log(c, SLUICE_LOG_ERROR, "cannot start a connection thread: %s",
                strerror(e));
    attempt_free(a);
    return e == EAGAIN ? SLUICE_ELIMIT : SLUICE_ENOMEM;
  }
  c->attempt = a;
  return 0;
}

int sluice__attempt_done(sluice_consumer *c) {
  sluice__attempt *a = c->attempt;
  if (!a) return 0;
  pthread_mutex_lock(&a->k.mu);
  int done = a->phase == PHASE_DONE;
  pthread_mutex_unlock(&a->k.mu);
  return done;
}

void sluice__attempt_cancel(sluice_consumer *c) {
  if (c->attempt) sluice__cancel_fire(&c->attempt->k);
}

void sluice__attempt_release(sluice_consumer *c) {
  sluice__attempt *a = c->attempt;
  if (!a) return;
  c->attempt = NULL;
  if (!a->threaded) {
    attempt_free(a);
    return;
  }
  pthread_t th = a->thread;
  pthread_mutex_lock(&a->k.mu);
  sluice__cancel_fire_locked(&a->k);
  int wait = a->phase != PHASE_NODES;
  if (!wait) {
    a->orphaned = 1; /* from here on `a` is the thread's */
    detached_add(1); /* before the thread can see it and count it off */
  }
  pthread_mutex_unlock(&a->k.mu);
  if (wait) {
    /* Done, or recovering from the consumer's declarations, which the
     * cancel interrupts: join. */
    pthread_join(th, NULL);
    attempt_free(a);
  } else {
    /* Possibly in a wait nothing interrupts (a name lookup, a TLS node's
     * TCP connect): it ends within connect_timeout_ms and frees itself. */
    pthread_detach(th);
  }
}

/* Send what the application declared or subscribed to while the attempt
 * ran, which the attempt did not know of. Rare; synchronous, like any
 * declaration on a live connection. */
static int send_leftovers(sluice_consumer *c, sluice__attempt *a) {
  struct sluice__topo *t = a->n_topo ? a->topo[a->n_topo - 1]->next : c->topo;
  for (; t; t = t->next) {
    int rc = sluice__apply_topology(c, t);
    if (rc) return rc;
  }
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) {
    struct sluice__sub *s = &c->subs[i];
    if (s->used && !s->cancelled && !s->active) {
      int rc = sluice__consume(c, s);
      if (rc) return rc;
    }
  }
  return 0;
}

/* Whether sluice writes the connection's ack frames itself (delivery.c,
 * "acks"): on plain TCP only; TLS bytes go through rabbitmq-c's OpenSSL
 * socket. */
static int own_acks_on(const char *uri) {
  sluice_uri u;
  char *buf;
  int own = sluice__uri_parse_alloc(uri, &u, &buf, NULL) == 0 && !u.tls;
  free(buf);
  return own;
}

int sluice__attempt_adopt(sluice_consumer *c) {
  sluice__attempt *a = c->attempt;
  if (a->threaded) pthread_join(a->thread, NULL);
  int rc = a->rc;
  sluice__note_close(c, a->link.close_code, a->link.close_text);
  for (size_t i = 0; i < a->n; i++)
    if (a->tls_asked[i]) c->tls_asked[a->idx[i]] = 1;
  /* a node that took a connection may be asked again after a later reset */
  if (!rc) c->tls_asked[a->node] = 0;
  if (rc) {
    if (rc != SLUICE_ECANCELED) sluice__policy_nodes_failed(&c->policy);
    c->refused_ms = a->refused_ms; /* for the policy (schedule_retry) */
    snprintf(c->last_error, sizeof(c->last_error), "%s", a->text);
    a->threaded = 0;
    sluice__attempt_release(c);
    return rc;
  }
  sluice__policy_node_up(&c->policy, a->node); /* stay on the node */
  c->conn = a->conn;
  a->conn = NULL;
  c->fd = amqp_get_sockfd(c->conn);
  c->own_acks = own_acks_on(a->node_uri);
  c->ackw_failed = 0;
  c->win_rx = c->win_tx = c->win_tx_prev = c->win_tx_at_read = 0;
  c->heartbeat_s = amqp_get_heartbeat(c->conn);
  c->last_rx_ms = sluice__now_ms();
  c->last_error[0] = '\0';
  /* c->generation already names this connection: it moves on when a live
   * connection dies (sluice__conn_lost), not when one is made. */
  c->connected = 1;
  for (size_t i = 0; i < a->n_subs; i++) {
    struct sluice__sub *s = &c->subs[a->subs[i].slot];
    if (s->used && s->tag && strcmp(s->tag, a->subs[i].tag) == 0) {
      s->active = 1;
      s->cancelled = 0;
    }
  }
  char uri[256];
  uri_for_log(a->node_uri, uri, sizeof(uri));
  sluice__log(c, SLUICE_LOG_INFO, "connected to %s (heartbeat %ds)", uri,
              c->heartbeat_s);
  rc = sluice__reads_begin(c);
  if (!rc) rc = send_leftovers(c, a);
  a->threaded = 0;
  sluice__attempt_release(c);
  if (rc) {
    snprintf(c->last_error, sizeof(c->last_error), "recovery: %s",
             sluice_strerror(rc));
    sluice__disconnect(c, 0);
    for (int i = 0; i < SLUICE__MAX_SUBS; i++) c->subs[i].active = 0;
    return rc;
  }
  sluice__policy_up(&c->policy);
  return 0;
}

int sluice__attempt_now(sluice_consumer *c) {
  if (c->attempt) return SLUICE_ESTATE;
  sluice__attempt *a = attempt_new(c);
  if (!a) return SLUICE_ENOMEM;
  c->attempt = a;
  attempt_run(a);
  a->phase = PHASE_DONE;
  return sluice__attempt_adopt(c);
}
