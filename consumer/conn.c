/* SPDX-License-Identifier: MIT */
/* Opening one connection to one node: parse the URI, TCP (sluice's own
 * connect, which a cancel can interrupt) or TLS (rabbitmq-c's SSL socket,
 * tls.c), AMQP login; what failed and why. Any thread: the consumer opens
 * connections on an attempt thread (attempt.c), the publisher on the
 * caller's. Also the result of a synchronous call, and closing. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/ssl.h>

#include <sluice/version.h>

#include "internal.h"
#include "tls.h"
#include "uri.h"

static amqp_table_entry_t bool_entry(const char *key, int v) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e.value.value.boolean = v;
  return e;
}

static amqp_table_entry_t str_entry(const char *key, const char *v) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes(v);
  return e;
}

void sluice__note_close(sluice_consumer *c, uint16_t code, const char *text) {
  if (!code) return;
  c->last_close_code = code;
  snprintf(c->last_close_text, sizeof(c->last_close_text), "%s", text);
}

/* ---- cancelling an open ---------------------------------------------------- */

int sluice__cancel_init(sluice__cancel *k) {
  memset(k, 0, sizeof(*k));
  k->dup_fd = -1;
  k->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (k->event_fd < 0) return SLUICE_ESOCKET;
  pthread_mutex_init(&k->mu, NULL);
  return 0;
}

void sluice__cancel_destroy(sluice__cancel *k) {
  if (k->dup_fd >= 0) close(k->dup_fd);
  if (k->event_fd >= 0) close(k->event_fd);
  k->dup_fd = k->event_fd = -1;
  pthread_mutex_destroy(&k->mu);
}

/* shutdown() acts on the socket, not on a descriptor: a duplicate lets
 * another thread interrupt every wait on it (handshake, login, a
 * synchronous call) while the owner may close its own descriptor at any
 * time without the number being reused under the canceller. */
int sluice__cancel_track(sluice__cancel *k, int fd) {
  if (!k) return 0;
  pthread_mutex_lock(&k->mu);
  if (k->dup_fd >= 0) close(k->dup_fd);
  k->dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  int cancelled = k->cancelled;
  if (cancelled) shutdown(fd, SHUT_RDWR);
  pthread_mutex_unlock(&k->mu);
  return cancelled ? SLUICE_ECANCELED : 0;
}

void sluice__cancel_untrack(sluice__cancel *k) {
  if (!k) return;
  pthread_mutex_lock(&k->mu);
  if (k->dup_fd >= 0) close(k->dup_fd);
  k->dup_fd = -1;
  pthread_mutex_unlock(&k->mu);
}

void sluice__cancel_fire_locked(sluice__cancel *k) {
  k->cancelled = 1;
  uint64_t one = 1;
  ssize_t w = write(k->event_fd, &one, sizeof(one));
  (void)w;
  if (k->dup_fd >= 0) shutdown(k->dup_fd, SHUT_RDWR);
}

void sluice__cancel_fire(sluice__cancel *k) {
  pthread_mutex_lock(&k->mu);
  sluice__cancel_fire_locked(k);
  pthread_mutex_unlock(&k->mu);
}

int sluice__cancelled(sluice__cancel *k) {
  if (!k) return 0;
  pthread_mutex_lock(&k->mu);
  int c = k->cancelled;
  pthread_mutex_unlock(&k->mu);
  return c;
}

static int ms_left(uint64_t deadline) {
  uint64_t now = sluice__now_ms();
  return now < deadline ? (int)(deadline - now) : 0;
}

/* ---- TCP ----------------------------------------------------------------- */

/* Connect to host:port by every address it resolves to, each bounded by
 * what is left until `deadline`, and as rabbitmq-c's own connect leaves the
 * socket: non-blocking, close-on-exec, TCP_NODELAY, SO_KEEPALIVE. A cancel
 * ends the wait at once. Returns the socket, or a SLUICE_E* code with why
 * in `text`. The name lookup itself (getaddrinfo) cannot be interrupted. */
static int tcp_connect(const char *host, int port, uint64_t deadline,
                       sluice__cancel *k, int *refused, char *text,
                       size_t textlen) {
  struct addrinfo hint, *res = NULL;
  memset(&hint, 0, sizeof(hint));
  hint.ai_family = AF_UNSPEC;
  hint.ai_socktype = SOCK_STREAM;
  hint.ai_protocol = IPPROTO_TCP;
  char ps[16];
  snprintf(ps, sizeof(ps), "%d", port);
  int g = getaddrinfo(host, ps, &hint, &res);
  if (g != 0) {
    snprintf(text, textlen, "cannot resolve '%s': %s", host, gai_strerror(g));
    return SLUICE_ECONNECT;
  }
  int rc = SLUICE_ECONNECT, err = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    if (sluice__cancelled(k)) {
      rc = SLUICE_ECANCELED;
      break;
    }
    int fd = socket(ai->ai_family,
                    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS) {
      struct pollfd p[2] = {{fd, POLLOUT, 0},
                            {k ? k->event_fd : -1, POLLIN, 0}};
      int n;
      do {
        n = poll(p, 2, ms_left(deadline));
      } while (n < 0 && errno == EINTR);
      if (n == 0) {
        close(fd);
        rc = SLUICE_ETIMEDOUT;
        err = ETIMEDOUT;
        break; /* the deadline is the node's, not one address's */
      }
      if (p[1].revents) {
        close(fd);
        rc = SLUICE_ECANCELED;
        break;
      }
      socklen_t l = sizeof(err);
      if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
        err = errno;
      r = err ? -1 : 0;
    } else if (r != 0) {
      err = errno;
    }
    if (r == 0) {
      freeaddrinfo(res);
      return fd;
    }
    /* connect() itself failed (refused, unreachable): what rabbitmq-c
     * calls a socket error (sluice__open_args.refused_ms). */
    *refused = 1;
    close(fd);
  }
  freeaddrinfo(res);
  if (rc == SLUICE_ECANCELED) snprintf(text, textlen, "cancelled");
  else
    snprintf(text, textlen, "%s",
             err == ETIMEDOUT ? "timed out" : strerror(err));
  return rc;
}

/* A plaintext login failed with a reset (or garbage) before any AMQP
 * reply, as when RabbitMQ's TLS listener answers the AMQP header with a TLS
 * alert and resets: is the port a TLS one? Ask again as a client would (the
 * AMQP protocol header) and look at the first byte of the answer: 0x15
 * (alert) or 0x16 (handshake) is a TLS record. Bounded by `ms`. An orderly
 * close (a node going down, a balancer with no backend) is not probed. */
static int speaks_tls(const char *host, int port, int ms) {
  struct addrinfo hint = {0}, *res = NULL;
  char ps[16];
  hint.ai_socktype = SOCK_STREAM;
  snprintf(ps, sizeof(ps), "%d", port);
  if (getaddrinfo(host, ps, &hint, &res) != 0 || !res) return 0;
  int fd =
      socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int yes = 0;
  uint64_t deadline = sluice__now_ms() + (uint64_t)ms;
  if (fd < 0) goto out;
  if (connect(fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS)
    goto out;
  struct pollfd p = {fd, POLLOUT, 0};
  uint64_t now = sluice__now_ms();
  if (poll(&p, 1, now < deadline ? (int)(deadline - now) : 0) != 1) goto out;
  static const char hdr[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};
  if (send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL) != (ssize_t)sizeof(hdr))
    goto out;
  p.events = POLLIN;
  now = sluice__now_ms();
  if (poll(&p, 1, now < deadline ? (int)(deadline - now) : 0) != 1) goto out;
  unsigned char b;
  yes = recv(fd, &b, 1, 0) == 1 && (b == 0x15 || b == 0x16);
out:
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  return yes;
}

/* speaks_tls(), unless this node's port was asked already
 * (sluice__open_args.tls_asked). */
static int ask_tls(const sluice__open_args *a, const sluice_uri *u) {
  if (a->tls_asked) {
    if (*a->tls_asked) return 0;
    *a->tls_asked = 1;
  }
  sluice__logf(a->log, SLUICE_LOG_DEBUG,
               "login to %s:%d reset before any reply: asking the port "
               "whether it speaks TLS",
               u->host, u->port);
  return speaks_tls(u->host, u->port,
                    a->connect_timeout_ms < 2000 ? a->connect_timeout_ms
                                                 : 2000);
}

/* TCP (or TLS) connect and AMQP login to a parsed URI. */
static int open_parsed(const sluice__open_args *a, const sluice_uri *uri,
                       amqp_connection_state_t *out, uint16_t *code, char *text,
                       size_t textlen) {
  const sluice_uri u = *uri;
  int rc = 0;
  if (u.tls && !a->tls) return SLUICE_ENOTSUP;

  /* One budget for the node: TCP connect, TLS handshake and login. */
  uint64_t deadline = sluice__now_ms() + (uint64_t)a->connect_timeout_ms;
  sluice__cancel *k = a->cancel;
  amqp_connection_state_t conn = amqp_new_connection();
  if (!conn) return SLUICE_ENOMEM;
  amqp_socket_t *sock;
  sluice__tls_diag diag;
  char t[256];
  if (u.tls) {
    rc = sluice__tls_socket(conn, a->tls, u.host, &diag, &sock, t, sizeof(t));
    if (rc) {
      snprintf(text, textlen, "%s", t);
      amqp_destroy_connection(conn);
      return rc;
    }
    /* The handshake can be interrupted from its start (tls.c tracks the
     * socket); the TCP connect inside rabbitmq-c cannot. */
    diag.cancel = k;
  } else if (!(sock = amqp_tcp_socket_new(conn))) {
    amqp_destroy_connection(conn);
    return SLUICE_ENOMEM;
  }
  const char *proto = u.tls ? "TLS to" : "connect to";
  int st = AMQP_STATUS_OK;
  uint64_t t0 = sluice__now_ms();
  if (u.tls) {
    struct timeval tv = sluice__tv_ms(a->connect_timeout_ms);
    st = amqp_socket_open_noblock(sock, u.host, u.port, &tv);
    /* rabbitmq-c 0.11 says only "socket error" for a TCP connect that
     * failed (not a timeout, not a name lookup): a refusal or an
     * unreachable host. How fast it came tells the policy whether the host
     * answered (sluice__policy_refused). Only before the handshake began. */
    if (st == AMQP_STATUS_SOCKET_ERROR && a->refused_ms && !diag.started)
      *a->refused_ms = sluice__now_ms() - t0;
    if (st == AMQP_STATUS_OK &&
        sluice__cancel_track(k, amqp_socket_get_sockfd(sock)))
      rc = SLUICE_ECANCELED;
  } else {
    int refused = 0;
    int fd = tcp_connect(u.host, u.port, deadline, k, &refused, t, sizeof(t));
    if (refused && a->refused_ms) *a->refused_ms = sluice__now_ms() - t0;
    if (fd < 0) {
      rc = fd;
    } else {
      amqp_tcp_socket_set_sockfd(sock, fd);
      if (sluice__cancel_track(k, fd)) rc = SLUICE_ECANCELED;
    }
  }
  if (st != AMQP_STATUS_OK || rc) {
    if (rc == SLUICE_ECANCELED || sluice__cancelled(k)) {
      rc = SLUICE_ECANCELED;
      snprintf(t, sizeof(t), "cancelled");
    } else if (st != AMQP_STATUS_OK) {
      rc = sluice__tls_error(&diag, SLUICE__TLS_AT_OPEN, st, t, sizeof(t));
      if (!rc) {
        snprintf(t, sizeof(t), "%s", amqp_error_string2(st));
        rc = st == AMQP_STATUS_TIMEOUT ? SLUICE_ETIMEDOUT : SLUICE_ECONNECT;
      }
    }
    snprintf(text, textlen, "%s %s:%d: %s", proto, u.host, u.port, t);
    sluice__cancel_untrack(k);
    amqp_destroy_connection(conn);
    return rc;
  }
  if (u.tls && !a->tls->verify_peer)
    sluice__logf(a->log, SLUICE_LOG_WARN,
                 "TLS to %s:%d: the broker's certificate is not verified "
                 "(skip_verify_peer)",
                 u.host, u.port);
  struct timeval tv = sluice__tv_ms((uint64_t)ms_left(deadline) + 1);
  amqp_set_handshake_timeout(conn, &tv);
  struct timeval rtv = sluice__tv_ms(a->rpc_timeout_ms);
  amqp_set_rpc_timeout(conn, &rtv);

  /* rabbitmq-c advertises only authentication_failure_close and
   * exchange_exchange_bindings by default; server basic.cancel and
   * connection.blocked need their capabilities
   * (docs/rabbitmq-c-event-loop.md, "Capabilities"). */
  amqp_table_entry_t caps[] = {
      bool_entry("consumer_cancel_notify", 1),
      bool_entry("connection.blocked", 1),
      bool_entry("authentication_failure_close", 1),
      bool_entry("exchange_exchange_bindings", 1),
      bool_entry("basic.nack", 1),
      bool_entry("publisher_confirms", 1),
      bool_entry("per_consumer_qos", 1),
  };
  amqp_table_entry_t props[4];
  int np = 0;
  props[np].key = amqp_cstring_bytes("capabilities");
  props[np].value.kind = AMQP_FIELD_KIND_TABLE;
  props[np].value.value.table.num_entries = (int)(sizeof(caps) / sizeof(*caps));
  props[np].value.value.table.entries = caps;
  np++;
  props[np++] = str_entry("product", "sluice");
  props[np++] = str_entry("version", SLUICE_VERSION_STRING);
  if (a->conn_name) props[np++] = str_entry("connection_name", a->conn_name);
  amqp_table_t table = {np, props};

  amqp_rpc_reply_t r = amqp_login_with_properties(
      conn, u.vhost, 0, a->frame_max, a->heartbeat_s, &table,
      AMQP_SASL_METHOD_PLAIN, u.user, u.password);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    rc = sluice__reply_to_err(r, code, t, sizeof(t));
    int lib = r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION;
    int tls_rc = 0;
    if (sluice__cancelled(k)) {
      rc = SLUICE_ECANCELED;
      snprintf(t, sizeof(t), "cancelled");
      lib = 0;
    }
    if (lib && r.library_error == AMQP_STATUS_TIMEOUT) rc = SLUICE_ETIMEDOUT;
    if (lib && u.tls)
      tls_rc = sluice__tls_error(&diag, SLUICE__TLS_AT_LOGIN, r.library_error,
                                 t, sizeof(t));
    if (tls_rc) {
      rc = tls_rc;
    } else if (lib && !u.tls &&
               (r.library_error == AMQP_STATUS_SOCKET_ERROR ||
                r.library_error == AMQP_STATUS_BAD_AMQP_DATA) &&
               ask_tls(a, &u)) {
      rc = SLUICE_ETLSPORT;
      snprintf(t, sizeof(t),
               "the port speaks TLS (its answer to the AMQP header is a TLS "
               "record): use amqps://");
    } else if (lib && r.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
      /* The socket closed during the handshake without a reply code. We
       * advertise authentication_failure_close, so RabbitMQ (3.2+) answers
       * refused credentials with a 403 first; a bare close is a node
       * shutting down or a load balancer with no live backend. Taking it
       * for SLUICE_EAUTH would stop reconnecting for good on a transient
       * fault: keep it retryable. */
      rc = SLUICE_ECONNECT;
    }
    snprintf(text, textlen, "login to %s:%d vhost '%s' as '%s': %s", u.host,
             u.port, u.vhost, u.user, t[0] ? t : sluice_strerror(rc));
    sluice__cancel_untrack(k);
    amqp_destroy_connection(conn);
    return rc;
  }
  if (u.tls) {
    /* diag lives on this stack: no callback may reach it any more. */
    SSL_CTX_set_app_data(amqp_ssl_socket_get_context(sock), NULL);
  }
  *out = conn;
  return 0;
}

/* Parse the URI into a buffer of its own (a URI may carry a JWT of a
 * few KiB as its password), then connect and log in. */
int sluice__amqp_open(const sluice__open_args *a, amqp_connection_state_t *out,
                      uint16_t *code, char *text, size_t textlen) {
  char *buf;
  sluice_uri u;
  sluice__uri_err e;
  *out = NULL;
  *code = 0;
  if (textlen) text[0] = '\0';
  int rc = sluice__uri_parse_alloc(a->uri, &u, &buf, &e);
  if (rc) {
    sluice__uri_err_text(rc, &e, text, textlen);
    return rc;
  }
  rc = open_parsed(a, &u, out, code, text, textlen);
  free(buf);
  return rc;
}

int sluice__rpc_conn_gone(amqp_connection_state_t conn) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
  switch (r.reply_type) {
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id != AMQP_CONNECTION_CLOSE_METHOD) return 0;
      /* Answer it, as frames.c does for one read in the steady state: the
       * broker then closes the socket at once. */
      {
        amqp_connection_close_ok_t ok;
        memset(&ok, 0, sizeof(ok));
        amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
      }
      return 1;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      switch (r.library_error) {
        case AMQP_STATUS_INVALID_PARAMETER: /* refused before sending */
        case AMQP_STATUS_TABLE_TOO_BIG:
        case AMQP_STATUS_NO_MEMORY: return 0;
        default:
          return 1; /* closed, reset, timed out (which closes the socket) */
      }
    default: return 0;
  }
}

/* The result of the last synchronous call on `ch`. A failed call closes its
 * channel: answer close-ok and open it again so the next call works. */
int sluice__rpc_result(amqp_connection_state_t conn, amqp_channel_t ch,
                       uint16_t *code, char *text, size_t textlen) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
  int rc = sluice__reply_to_err(r, code, text, textlen);
  if (rc == 0) return 0;
  if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
      r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    amqp_channel_close_ok_t ok;
    memset(&ok, 0, sizeof(ok));
    if (amqp_send_method(conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != 0)
      return SLUICE_ESOCKET;
    amqp_channel_open(conn, ch);
    int rc2 = sluice__reply_to_err(amqp_get_rpc_reply(conn), NULL, NULL, 0);
    if (rc2) return rc2;
  }
  return rc;
}

/* The closing handshake, each step bounded by the rpc timeout set at
 * connect; the broker requeues what was not acknowledged either way. A
 * library error ends it: after one from a read (AMQP_STATUS_BAD_AMQP_DATA:
 * bytes that are not AMQP) rabbitmq-c 0.11 leaves its frame decoder
 * half-way, with the bogus frame size as its target and its 7-byte header
 * buffer as the destination, and its next read overflows that buffer
 * (found with ASan: a 131,072-byte memcpy into the connection's state). A
 * close that fails says the socket or the stream was already wrong. */
static void close_rpcs(sluice_consumer *c) {
  amqp_rpc_reply_t r =
      amqp_channel_close(c->conn, SLUICE__CH_TOPOLOGY, AMQP_REPLY_SUCCESS);
  if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION)
    r = amqp_channel_close(c->conn, SLUICE__CH_MAIN, AMQP_REPLY_SUCCESS);
  if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION)
    r = amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    char text[128];
    int rc = sluice__reply_to_err(r, NULL, text, sizeof(text));
    sluice__log(c, SLUICE_LOG_WARN, "close: %s (%s)", sluice_strerror(rc),
                text);
  }
}

void sluice__disconnect(sluice_consumer *c, int graceful) {
  if (!c->conn) return;
  /* What sluice read ahead comes before the close-ok: decoded and
   * dropped first; if it is not AMQP, the socket is simply closed. */
  if (graceful && sluice__reads_drop(c) == 0) close_rpcs(c);
  amqp_destroy_connection(c->conn);
  c->conn = NULL;
  c->fd = -1;
  c->connected = 0;
  c->own_reads = 0;
  c->rx_off = c->rx_len = 0;
}
