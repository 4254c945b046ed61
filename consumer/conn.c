/* SPDX-License-Identifier: MIT */
/* A connection attempt, one step after the other: parse the URI, TCP
 * connect, AMQP login, open the two channels, basic.qos; and the close.
 * Today each step is a blocking call on the loop thread (or before it
 * runs), bounded by connect_timeout_ms and rpc_timeout_ms; the steady state
 * never calls them. Each step takes what the previous one produced and
 * nothing else, so that they can become the states of a non-blocking
 * attempt. The topology and subscriptions that follow are topology.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netdb.h>
#include <poll.h>

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

/* TCP (or TLS) connect and AMQP login to a parsed URI. */
static int open_parsed(const sluice__open_args *a, const sluice_uri *uri,
                       amqp_connection_state_t *out, uint16_t *code, char *text,
                       size_t textlen) {
  const sluice_uri u = *uri;
  int rc;
  if (u.tls && !a->tls) return SLUICE_ENOTSUP;

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
  } else if (!(sock = amqp_tcp_socket_new(conn))) {
    amqp_destroy_connection(conn);
    return SLUICE_ENOMEM;
  }
  const char *proto = u.tls ? "TLS to" : "connect to";
  struct timeval tv = sluice__tv_ms(a->connect_timeout_ms);
  uint64_t t0 = sluice__now_ms();
  int st = amqp_socket_open_noblock(sock, u.host, u.port, &tv);
  if (st != AMQP_STATUS_OK) {
    /* rabbitmq-c 0.11 says only "socket error" for a TCP connect that
     * failed (not a timeout, not a name lookup): a refusal or an
     * unreachable host. How fast it came tells the policy whether the host
     * answered (sluice__policy_refused). With TLS, only before the
     * handshake began. */
    if (st == AMQP_STATUS_SOCKET_ERROR && a->refused_ms &&
        !(u.tls && diag.started))
      *a->refused_ms = sluice__now_ms() - t0;
    rc = u.tls ? sluice__tls_error(&diag, SLUICE__TLS_AT_OPEN, st, t, sizeof(t))
               : 0;
    if (!rc) {
      snprintf(t, sizeof(t), "%s", amqp_error_string2(st));
      rc = st == AMQP_STATUS_TIMEOUT ? SLUICE_ETIMEDOUT : SLUICE_ECONNECT;
    }
    snprintf(text, textlen, "%s %s:%d: %s", proto, u.host, u.port, t);
    amqp_destroy_connection(conn);
    return rc;
  }
  if (u.tls && !a->tls->verify_peer)
    sluice__logf(a->log, SLUICE_LOG_WARN,
                 "TLS to %s:%d: the broker's certificate is not verified "
                 "(skip_verify_peer)",
                 u.host, u.port);
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
    if (lib && u.tls)
      tls_rc = sluice__tls_error(&diag, SLUICE__TLS_AT_LOGIN, r.library_error,
                                 t, sizeof(t));
    if (tls_rc) {
      rc = tls_rc;
    } else if (lib && !u.tls &&
               (r.library_error == AMQP_STATUS_SOCKET_ERROR ||
                r.library_error == AMQP_STATUS_BAD_AMQP_DATA) &&
               speaks_tls(u.host, u.port,
                          a->connect_timeout_ms < 2000 ? a->connect_timeout_ms
                                                       : 2000)) {
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

/* `*refused_ms`: as in sluice__open_args. */
static int connect_uri(sluice_consumer *c, const char *uri_str,
                       uint64_t *refused_ms) {
  sluice__open_args a = {uri_str,
                         c->conn_name,
                         c->o.connect_timeout_ms,
                         c->o.rpc_timeout_ms,
                         c->o.heartbeat_s < 0 ? 0 : c->o.heartbeat_s,
                         c->o.frame_max,
                         c->has_tls ? &c->tls : NULL,
                         &c->log,
                         refused_ms};
  uint16_t code;
  char text[512];
  amqp_connection_state_t conn;
  int rc = sluice__amqp_open(&a, &conn, &code, text, sizeof(text));
  if (rc) {
    sluice__note_close(c, code, text);
    /* A probe finding the node still down is expected: not a warning. */
    int level = rc != SLUICE_ECONNECT                     ? SLUICE_LOG_ERROR
                : c->probing && *refused_ms != UINT64_MAX ? SLUICE_LOG_DEBUG
                                                          : SLUICE_LOG_WARN;
    sluice__log(c, level, "%s (%s)", text, sluice_strerror(rc));
    return rc;
  }
  c->conn = conn;
  c->fd = amqp_get_sockfd(conn);
  /* In autoAck mode what waits in the kernel's receive buffer was settled
   * by the broker: keep it small (Linux autotunes it up to megabytes). */
  int rcvbuf = c->o.socket_rcvbuf;
  if (rcvbuf == 0 && c->o.ack_mode == SLUICE_ACK_AUTO) rcvbuf = 128 * 1024;
  if (rcvbuf > 0 &&
      setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) != 0)
    sluice__log(c, SLUICE_LOG_WARN, "SO_RCVBUF %d: %s", rcvbuf,
                strerror(errno));
  c->heartbeat_s = amqp_get_heartbeat(conn);
  c->last_rx_ms = sluice__now_ms();
  sluice__log(c, SLUICE_LOG_INFO, "connected to %s (heartbeat %ds)", uri_str,
              c->heartbeat_s);
  return 0;
}

static int open_channel(sluice_consumer *c, amqp_channel_t ch) {
  amqp_channel_open(c->conn, ch);
  uint16_t code;
  char text[256];
  int rc = sluice__reply_to_err(amqp_get_rpc_reply(c->conn), &code, text,
                                sizeof(text));
  sluice__note_close(c, code, text);
  return rc;
}

int sluice__connect(sluice_consumer *c) {
  int rc = SLUICE_ECONNECT, retryable = 0;
  /* every node refused so far: the slowest refusal; else UINT64_MAX */
  uint64_t slowest = 0;
  c->refused_ms = UINT64_MAX;
  for (size_t i = 0; i < c->n_uris; i++) {
    size_t idx = sluice__policy_node(&c->policy, i);
    uint64_t refused_ms = UINT64_MAX;
    int node_rc = connect_uri(c, c->uris[idx], &refused_ms);
    if (node_rc == 0) {
      sluice__policy_node_up(&c->policy, idx); /* stay on the node */
      rc = 0;
      break;
    }
    if (refused_ms == UINT64_MAX) slowest = UINT64_MAX;
    else if (slowest != UINT64_MAX && refused_ms > slowest)
      slowest = refused_ms;
    /* What the attempt reports: the last node's error, unless an earlier
     * node failed in a way that may pass (down, restarting) and this one
     * for good (its certificate): that one is worth retrying. */
    if (sluice__retryable(node_rc)) {
      rc = node_rc;
      retryable = 1;
    } else if (!retryable) {
      rc = node_rc;
    }
    /* Credentials and vhosts are the same on every node of a cluster:
     * trying the next one would only repeat the refusal. */
    if (sluice__err_class(node_rc) & SLUICE__ERR_EVERY_NODE) {
      rc = node_rc;
      break;
    }
  }
  if (rc) {
    sluice__policy_nodes_failed(&c->policy);
    c->refused_ms = slowest;
    return rc;
  }
  if ((rc = open_channel(c, SLUICE__CH_MAIN)) ||
      (rc = open_channel(c, SLUICE__CH_TOPOLOGY))) {
    sluice__disconnect(c, 0);
    return rc;
  }
  /* c->generation already names this connection: it moves on when a live
   * connection dies (sluice__conn_lost), not when one is made. */
  c->connected = 1;
  return 0;
}

int sluice__setup_channel(sluice_consumer *c) {
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) {
    amqp_basic_qos(c->conn, SLUICE__CH_MAIN, 0, c->o.prefetch, 0);
    uint16_t code;
    char text[256];
    int rc = sluice__reply_to_err(amqp_get_rpc_reply(c->conn), &code, text,
                                  sizeof(text));
    sluice__note_close(c, code, text);
    if (rc) return rc;
  }
  return 0;
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

void sluice__disconnect(sluice_consumer *c, int graceful) {
  if (!c->conn) return;
  if (graceful) {
    /* Bounded by the rpc timeout set at connect. */
    amqp_channel_close(c->conn, SLUICE__CH_TOPOLOGY, AMQP_REPLY_SUCCESS);
    amqp_channel_close(c->conn, SLUICE__CH_MAIN, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
  }
  amqp_destroy_connection(c->conn);
  c->conn = NULL;
  c->fd = -1;
  c->connected = 0;
}
