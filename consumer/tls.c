/* SPDX-License-Identifier: MIT */
/* TLS on rabbitmq-c's SSL socket (tls.h). rabbitmq-c 0.11 gives the
 * SSL_CTX of each socket (amqp_ssl_socket_get_context); everything is set
 * there before the socket opens:
 * - verification by OpenSSL during the handshake (SSL_VERIFY_PEER): a
 *   server that fails it never sees the client certificate, and the verify
 *   callback keeps OpenSSL's reason, which rabbitmq-c would fold into one
 *   status;
 * - the host name or IP address to match, in the CTX's X509_VERIFY_PARAM:
 *   rabbitmq-c's own host check ignores IP subjectAltNames, so it is off;
 * - SNI: rabbitmq-c sends the host it connects to; the info callback sets
 *   the configured server name (or none for an IP literal) at handshake
 *   start, before the ClientHello is written;
 * - the alerts the server sends and whether it asked for a certificate, to
 *   tell a refused client certificate from other failures.
 * See docs/consumer.md, "TLS". */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp_ssl_socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "util.h"

/* ---- the settings -------------------------------------------------------- */

static int copy_str(char **dst, const char *src) {
  *dst = NULL;
  if (!src || !src[0]) return 0;
  return (*dst = sluice__strdup(src)) ? 0 : SLUICE_ENOMEM;
}

/* The first error OpenSSL queued on this thread, in its words; clears it. */
static void ssl_reason(char *buf, size_t len) {
  unsigned long e = ERR_peek_error();
  if (!len) return;
  buf[0] = '\0';
  if (e) {
    const char *r = ERR_reason_error_string(e);
    if (r) snprintf(buf, len, "%s", r);
    else ERR_error_string_n(e, buf, len);
  }
  ERR_clear_error();
}

static int passwd_cb(char *buf, int size, int rwflag, void *user) {
  const char *pw = user;
  if (!pw) return 0; /* an encrypted key and no password: fail, never ask */
  size_t n = strlen(pw);
  if (n > (size_t)size) n = (size_t)size;
  memcpy(buf, pw, n);
  return (int)n;
}

/* Load the trust anchors and the client certificate into `ctx`. */
static int load_files(SSL_CTX *ctx, const sluice__tls_config *cfg, char *text,
                      size_t textlen) {
  char why[200];
  ERR_clear_error();
  if (!cfg->verify_peer) {
    /* Nothing is verified: no trust anchors to load. */
  } else if (cfg->ca_file || cfg->ca_dir) {
    if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, cfg->ca_dir) != 1) {
      ssl_reason(why, sizeof(why));
      snprintf(text, textlen, "TLS: cannot load the CA %s '%s': %s",
               cfg->ca_file ? "file" : "directory",
               cfg->ca_file ? cfg->ca_file : cfg->ca_dir, why);
      return SLUICE_ETLSCONFIG;
    }
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    ssl_reason(why, sizeof(why));
    snprintf(text, textlen, "TLS: cannot load the system's CAs: %s", why);
    return SLUICE_ETLSCONFIG;
  }
  if (!cfg->cert_file) return 0;
  SSL_CTX_set_default_passwd_cb(ctx, passwd_cb);
  SSL_CTX_set_default_passwd_cb_userdata(ctx, cfg->key_password);
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
    ssl_reason(why, sizeof(why));
    snprintf(text, textlen, "TLS: cannot load the client certificate '%s': %s",
             cfg->cert_file, why);
    return SLUICE_ETLSCONFIG;
  }
  const char *key = cfg->key_file ? cfg->key_file : cfg->cert_file;
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    ssl_reason(why, sizeof(why));
    snprintf(text, textlen, "TLS: cannot load the private key '%s': %s", key,
             why);
    return SLUICE_ETLSCONFIG;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ssl_reason(why, sizeof(why));
    snprintf(text, textlen,
             "TLS: the private key '%s' does not match the certificate "
             "'%s': %s",
             key, cfg->cert_file, why);
    return SLUICE_ETLSCONFIG;
  }
  return 0;
}

int sluice__tls_config_init(sluice__tls_config *out, const sluice_tls_opts *o,
                            char *text, size_t textlen) {
  memset(out, 0, sizeof(*out));
  if (textlen) text[0] = '\0';
  sluice_tls_opts z;
  if (!o) {
    memset(&z, 0, sizeof(z));
    o = &z;
  }
  switch (o->min_version) {
    case SLUICE_TLS_DEFAULT:
    case SLUICE_TLS_1_2: out->min_version = TLS1_2_VERSION; break;
    case SLUICE_TLS_1_3: out->min_version = TLS1_3_VERSION; break;
    default:
      snprintf(text, textlen, "TLS: unknown min_version %d", o->min_version);
      return SLUICE_EINVAL;
  }
  if (o->key_file && !o->cert_file) {
    snprintf(text, textlen, "TLS: key_file without cert_file");
    return SLUICE_EINVAL;
  }
  out->verify_peer = !o->skip_verify_peer;
  out->verify_hostname = out->verify_peer && !o->skip_verify_hostname;
  if (copy_str(&out->ca_file, o->ca_file) ||
      copy_str(&out->ca_dir, o->ca_dir) ||
      copy_str(&out->cert_file, o->cert_file) ||
      copy_str(&out->key_file, o->key_file) ||
      copy_str(&out->key_password, o->key_password) ||
      copy_str(&out->server_name, o->server_name))
    return SLUICE_ENOMEM;
  /* Load everything once now, so that a wrong path fails at creation and
   * not at the first connection. */
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return SLUICE_ENOMEM;
  int rc = load_files(ctx, out, text, textlen);
  SSL_CTX_free(ctx);
  return rc;
}

void sluice__tls_config_free(sluice__tls_config *cfg) {
  if (!cfg) return;
  free(cfg->ca_file);
  free(cfg->ca_dir);
  free(cfg->cert_file);
  free(cfg->key_file);
  if (cfg->key_password) {
    /* Not left lying in freed memory. */
    volatile char *p = cfg->key_password;
    while (*p) *p++ = '\0';
  }
  free(cfg->key_password);
  free(cfg->server_name);
  memset(cfg, 0, sizeof(*cfg));
}

void sluice__tls_thread_stop(void) {
  OPENSSL_thread_stop();
}

int sluice__tls_config_copy(sluice__tls_config *dst,
                            const sluice__tls_config *src) {
  *dst = *src;
  dst->ca_file = dst->ca_dir = dst->cert_file = dst->key_file = NULL;
  dst->key_password = dst->server_name = NULL;
  if (copy_str(&dst->ca_file, src->ca_file) ||
      copy_str(&dst->ca_dir, src->ca_dir) ||
      copy_str(&dst->cert_file, src->cert_file) ||
      copy_str(&dst->key_file, src->key_file) ||
      copy_str(&dst->key_password, src->key_password) ||
      copy_str(&dst->server_name, src->server_name)) {
    sluice__tls_config_free(dst);
    return SLUICE_ENOMEM;
  }
  return 0;
}

/* ---- one attempt's socket ------------------------------------------------ */

static sluice__tls_diag *diag_of(const SSL *ssl) {
  return SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
}

static int verify_cb(int ok, X509_STORE_CTX *x) {
  SSL *ssl =
      X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
  sluice__tls_diag *d = ssl ? diag_of(ssl) : NULL;
  if (!ok && d && !d->verify_err) {
    d->verify_err = X509_STORE_CTX_get_error(x);
    d->verify_depth = X509_STORE_CTX_get_error_depth(x);
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    if (cert)
      X509_NAME_oneline(X509_get_subject_name(cert), d->verify_subject,
                        (int)sizeof(d->verify_subject));
  }
  return ok;
}

static void info_cb(const SSL *ssl, int where, int ret) {
  sluice__tls_diag *d = diag_of(ssl);
  if (!d) return;
  if (where & SSL_CB_HANDSHAKE_START) {
    if (!d->started) {
      /* Before the ClientHello is written: the name it carries. */
      SSL_set_tlsext_host_name((SSL *)ssl, d->sni);
      /* From here on a cancel can interrupt the handshake. */
      if (d->cancel) sluice__cancel_track(d->cancel, SSL_get_fd(ssl));
    }
    d->started = 1;
  }
  if (where & SSL_CB_HANDSHAKE_DONE) {
    d->done = 1;
    d->version = SSL_version(ssl);
  }
  if ((where & SSL_CB_ALERT) && (ret >> 8) == SSL3_AL_FATAL) {
    if ((where & SSL_CB_READ) && d->alert < 0) d->alert = ret & 0xff;
    if ((where & SSL_CB_WRITE) && d->alert_sent < 0) d->alert_sent = ret & 0xff;
  }
}

static void msg_cb(int write_p, int version, int content_type, const void *buf,
                   size_t len, SSL *ssl, void *arg) {
  /* A CertificateRequest from the server (TLS 1.2 and 1.3 alike). */
  if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
      ((const unsigned char *)buf)[0] == SSL3_MT_CERTIFICATE_REQUEST) {
    sluice__tls_diag *d = diag_of(ssl);
    if (d) d->cert_requested = 1;
  }
}

static int is_ip_literal(const char *host) {
  unsigned char a[16];
  return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int sluice__tls_socket(amqp_connection_state_t conn,
                       const sluice__tls_config *cfg, const char *host,
                       sluice__tls_diag *diag, amqp_socket_t **out, char *text,
                       size_t textlen) {
  *out = NULL;
  memset(diag, 0, sizeof(*diag));
  diag->cfg = cfg;
  diag->alert = diag->alert_sent = -1;
  amqp_socket_t *sock = amqp_ssl_socket_new(conn);
  if (!sock) return SLUICE_ENOMEM;
  SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);
  int rc = load_files(ctx, cfg, text, textlen);
  if (rc) return rc; /* the socket belongs to conn, which frees it */
  SSL_CTX_set_min_proto_version(ctx, cfg->min_version);
  SSL_CTX_set_app_data(ctx, diag);
  SSL_CTX_set_info_callback(ctx, info_cb);
  SSL_CTX_set_msg_callback(ctx, msg_cb);

  const char *name = cfg->server_name ? cfg->server_name : host;
  /* RFC 6066: no IP literal in SNI. */
  diag->sni = is_ip_literal(name) ? NULL : name;
  /* OpenSSL checks the name (or address) while it verifies the chain, so a
   * mismatch has its own X509_V_ERR and fails the handshake. */
  amqp_ssl_socket_set_verify_hostname(sock, 0);
  amqp_ssl_socket_set_verify_peer(sock, cfg->verify_peer);
  if (cfg->verify_peer) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
    if (cfg->verify_hostname) {
      X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
      X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      int ok = is_ip_literal(name) ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
                                   : X509_VERIFY_PARAM_set1_host(vp, name, 0);
      if (ok != 1) {
        snprintf(text, textlen, "TLS: cannot verify the name '%s'", name);
        return SLUICE_ETLSCONFIG;
      }
    }
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  }
  *out = sock;
  return 0;
}

/* ---- what went wrong ----------------------------------------------------- */

static int verify_code(long e) {
  switch (e) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
    case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD: return SLUICE_ETLSEXPIRED;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH: return SLUICE_ETLSHOST;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED: return SLUICE_ETLSCA;
    default: return SLUICE_ETLSVERIFY;
  }
}

/* Alerts a server sends when it does not accept the client's certificate
 * (or wants one and got none). */
static int client_cert_alert(int a, int cert_requested) {
  switch (a) {
    case SSL3_AD_BAD_CERTIFICATE:
    case SSL3_AD_UNSUPPORTED_CERTIFICATE:
    case SSL3_AD_CERTIFICATE_REVOKED:
    case SSL3_AD_CERTIFICATE_EXPIRED:
    case SSL3_AD_CERTIFICATE_UNKNOWN:
    case TLS1_AD_UNKNOWN_CA:
    case TLS1_AD_ACCESS_DENIED:
    case TLS13_AD_CERTIFICATE_REQUIRED: return 1;
    case SSL3_AD_HANDSHAKE_FAILURE: return cert_requested;
    default: return 0;
  }
}

/* OpenSSL's reasons for a peer that does not speak TLS at all. */
static int not_tls_reason(unsigned long e) {
  if (ERR_GET_LIB(e) != ERR_LIB_SSL) return 0;
  switch (ERR_GET_REASON(e)) {
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST: return 1;
    default: return 0;
  }
}

int sluice__tls_error(const sluice__tls_diag *d, int when, int status,
                      char *text, size_t textlen) {
  unsigned long e = ERR_peek_error();
  char why[200];
  ssl_reason(why, sizeof(why));
  if (d->verify_err) {
    snprintf(text, textlen, "certificate verify failed: %s (depth %d, %s)",
             X509_verify_cert_error_string(d->verify_err), d->verify_depth,
             d->verify_subject[0] ? d->verify_subject : "no subject");
    return verify_code(d->verify_err);
  }
  if (d->alert >= 0) {
    /* OpenSSL 3.0 has no text for TLS 1.3's certificate_required. */
    const char *a = d->alert == TLS13_AD_CERTIFICATE_REQUIRED
                        ? "certificate required"
                        : SSL_alert_desc_string_long(d->alert);
    if (client_cert_alert(d->alert, d->cert_requested)) {
      snprintf(text, textlen,
               "the broker refused the client certificate (TLS alert '%s'%s)",
               a, d->cfg && d->cfg->cert_file ? "" : "; none is configured");
      return SLUICE_ETLSCLIENT;
    }
    snprintf(text, textlen, "TLS alert from the broker: %s%s%s", a,
             why[0] ? ": " : "", why);
    return SLUICE_ETLS;
  }
  if (status == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED) {
    snprintf(text, textlen, "certificate does not match the host name");
    return SLUICE_ETLSHOST;
  }
  if (status == AMQP_STATUS_SSL_PEER_VERIFY_FAILED) {
    snprintf(text, textlen, "the broker sent no certificate");
    return SLUICE_ETLSVERIFY;
  }
  if (!d->started) return 0; /* TCP never came up: not TLS's failure */
  if (!d->done) {
    if (e && not_tls_reason(e)) {
      snprintf(text, textlen,
               "the port does not speak TLS (%s): a plaintext port given "
               "as amqps://?",
               why);
      return SLUICE_ENOTTLS;
    }
    if (status == AMQP_STATUS_TIMEOUT) {
      snprintf(text, textlen,
               "TLS handshake timed out: the node accepted the connection "
               "but did not answer");
      return SLUICE_ETIMEDOUT;
    }
    snprintf(text, textlen, "TLS handshake failed: %s",
             why[0] ? why : amqp_error_string2(status));
    return SLUICE_ETLS;
  }
  if (when == SLUICE__TLS_AT_LOGIN && d->version == TLS1_3_VERSION &&
      d->cert_requested &&
      (status == AMQP_STATUS_SSL_ERROR || status == AMQP_STATUS_SOCKET_ERROR ||
       status == AMQP_STATUS_CONNECTION_CLOSED)) {
    /* A TLS 1.3 server judges the client certificate after the handshake
     * has completed on the client's side. RabbitMQ then sends its alert and
     * closes while the AMQP header sluice sent is still unread, so the
     * kernel resets the connection and the alert is often lost (from 1 time
     * in 6 to 7 in 8 here). A server that asked for a certificate and hung up before any
     * AMQP reply refused it; ETLSCLIENT is retried like a transient fault,
     * in case this was a node going down at that moment. */
    snprintf(text, textlen,
             "the broker closed the connection right after the TLS 1.3 "
             "handshake in which it asked for a client certificate%s: it "
             "refused the certificate (%s)",
             d->cfg && d->cfg->cert_file ? "" : " (none is configured)",
             why[0] ? why : amqp_error_string2(status));
    return SLUICE_ETLSCLIENT;
  }
  return 0;
}
