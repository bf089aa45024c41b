/*
 * hk_config - the cluster's YAML configuration.
 *
 * One file describes every node of the cluster under `nodes:`, keyed by node
 * name; each node has a `role`. hk_config_load() parses and validates the
 * whole file up front into plain structs, so a role never touches YAML. Every
 * error names the file, line and key. See docs/CONFIG.md for each key.
 */
#ifndef HK_CONFIG_H
#define HK_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <netinet/in.h>

enum hk_role { HK_ROLE_INGRESS = 1, HK_ROLE_ROUTER = 2, HK_ROLE_SENDER = 3 };

/* An IPv4 or IPv6 network in CIDR form. */
struct hk_cidr {
	int family;             /* AF_INET or AF_INET6 */
	uint8_t addr[16];       /* network address, network byte order */
	unsigned prefix;        /* prefix length in bits */
};

/* What an ingress listener offers (docs/CONFIG.md, `listeners`). */
enum hk_listen_mode {
	HK_LISTEN_RELAY = 1,      /* port 25: STARTTLS if tls, AUTH after TLS, relay_networks relay */
	HK_LISTEN_SUBMISSION = 2, /* port 587: STARTTLS, AUTH required before MAIL */
	HK_LISTEN_SMTPS = 3,      /* port 465: implicit TLS (RFC 8314), AUTH required */
};

/* What DATA does with a line ended by a bare LF (SMTP smuggling defence). */
enum hk_bare_lf {
	HK_BARE_LF_REJECT = 0,    /* 550 5.5.2 at the end of data, nothing queued */
	HK_BARE_LF_NORMALIZE = 1, /* store it as CRLF */
};

struct hk_listener_conf {
	char *host;
	uint16_t port;          /* 0: any free port (tests) */
	enum hk_listen_mode mode;
	bool allow_plaintext_auth; /* offer AUTH before TLS (default false) */
};

/* Certificate and protocol settings for a TLS server (or client). */
struct hk_tls_conf {
	char *certificate;      /* PEM file: the leaf, then its chain */
	char *key;              /* PEM file: the private key */
	char *ciphers;          /* TLS 1.2 cipher list, or NULL for OpenSSL's default */
	char *ciphersuites;     /* TLS 1.3 suites, or NULL for OpenSSL's default */
};

struct hk_credential {
	char *user;
	char *hash;             /* crypt(3) SHA-512 ("$6$..."), never a password */
};

/* A customer: who may authenticate as it, and what it may send. */
struct hk_tenant_conf {
	char *name;
	int line;               /* where it is defined (0: implicit) */
	struct hk_credential *credentials; /* from credentials: and credentials_file: */
	size_t n_credentials;
	char *credentials_file; /* as configured (resolved path), or NULL */
	char **sender_domains;  /* lower-case; MAIL FROM must be one or a subdomain */
	size_t n_sender_domains; /* 0: any sender domain */
	char *pool;             /* IP pool name ("shared") */
	uint32_t rate_count;    /* messages per rate_per_ms; 0: no limit */
	uint32_t rate_per_ms;
	bool implicit;          /* made up for network_tenant: no tenants: section */
};

struct hk_router_conf {
	char *front;            /* endpoint ingress nodes connect to */
	char *back;             /* endpoint senders connect to */
	uint32_t heartbeat_timeout_ms; /* a sender silent this long is dead */
	uint32_t enqueue_timeout_ms;   /* a part not acked by then is resent or nacked */
	uint32_t resend_window_ms;     /* resend failed parts until this long after arrival */
	uint32_t max_inflight_per_sender; /* enqueues unanswered per sender, then busy */
	uint32_t max_pending;          /* submissions in flight, then busy */
};

struct hk_ingress_conf {
	struct hk_listener_conf *listeners; /* from listen: or listeners: */
	size_t n_listeners;
	struct hk_tls_conf tls;
	bool has_tls;           /* a tls: map was given */
	char *hostname;         /* greeting and Received header */
	struct hk_cidr *relay_networks;
	size_t n_relay_networks;
	char *network_tenant;   /* tenant of mail relayed from relay_networks */
	const struct hk_tenant_conf *tenant; /* network_tenant, resolved */
	char **routers;         /* router front endpoints (resolved from names) */
	size_t n_routers;
	uint32_t submit_timeout_ms;  /* 451 4.3.0 when no ack within this */
	uint32_t command_timeout_ms; /* idle time allowed between commands */
	uint32_t data_timeout_ms;    /* idle time allowed inside DATA */
	size_t max_message_size;     /* bytes, SIZE and DATA limit */
	uint32_t max_recipients;
	uint32_t max_sessions;
	/* Limits (docs/ARCHITECTURE.md, "Limits at the ingress") */
	uint32_t max_header_line_length; /* header line, CRLF excluded (<= 998) */
	uint32_t max_sessions_per_ip;    /* per client IP (IPv6: per /64), all listeners */
	uint32_t auth_failure_limit;     /* failed AUTH per client IP ... */
	uint32_t auth_failure_window_ms; /* ... per this window; then 421 and refused */
	uint32_t max_errors;             /* rejected commands in a session, then 421 */
	enum hk_bare_lf bare_lf;         /* a line ended by a bare LF in DATA */
};

/* One source address of a sender's IP pool. */
struct hk_pool_addr {
	char *address;          /* IPv4 or IPv6 literal: outbound sockets bind to it */
	char *hostname;         /* its EHLO name (must match its PTR) */
	uint32_t weight;        /* share in the pool's weighted round robin (>= 1) */
	bool warmup;            /* a new address: under the warm-up schedule */
};

/* A named pool of source addresses (pools: of a sender). */
struct hk_pool_conf {
	char *name;
	struct hk_pool_addr *addrs;
	size_t n_addrs;
	char *spill_to;         /* a pool whose warm addresses may carry this one's
	                         * mail when none of its own has budget; NULL: wait */
	int line;
};

struct hk_sender_conf {
	char **routers;         /* router back endpoints (resolved from names) */
	size_t n_routers;
	char *queue_path;       /* LMDB environment directory (created) */
	size_t queue_map_size;  /* LMDB map size in bytes */
	bool queue_sync;        /* fsync each commit (the durability promise) */
	char *hostname;         /* EHLO name */
	char *source_address;   /* bind outbound sockets to this, or NULL */
	uint32_t weight;        /* capacity weight in the rendezvous hash */
	char *dns_servers;      /* "host:port[,host:port]" or NULL for resolv.conf */
	uint16_t delivery_port; /* TCP port of MX hosts (25) */
	uint32_t max_deliveries;    /* concurrent outbound transactions */
	uint32_t connect_timeout_ms;
	uint32_t command_timeout_ms;
	uint32_t retry_min_ms;      /* first retry delay after a 4xx */
	uint32_t retry_max_ms;      /* retry delay cap (doubling) */
	uint32_t max_lifetime_ms;   /* then expire and bounce */
	uint32_t heartbeat_interval_ms;
	uint32_t connection_cache_time_ms;  /* park an SMTP connection this long; 0: no reuse */
	uint32_t connection_reuse_limit;    /* transactions per SMTP connection (>= 1) */
	uint32_t max_connections_per_domain; /* concurrent sessions to one domain (>= 1) */
	uint32_t delay_warning_ms;  /* delay DSN (NOTIFY=DELAY) after this long queued; 0: first deferral */
	char *shaping_file;         /* rules on top of the built-in ones, or NULL */
	char *warmup_file;          /* the warm-up schedule, or NULL: built in */
	char *reputation_dir;       /* warm-up and shaping state (LMDB); default QUEUE/reputation */
	struct hk_pool_conf *pools; /* pools:, or one implicit "shared" pool of
	                             * {source_address, hostname} */
	size_t n_pools;
	char **tls_required_domains;    /* canonical (lower case, A-label): never in plaintext */
	size_t n_tls_required_domains;
	char *tls_ca_file;              /* PEM CAs to check MX certificates against, or NULL */
};

/* hk_sender_pool - the pool NAME of sender CONF, or NULL. */
const struct hk_pool_conf *hk_sender_pool(const struct hk_sender_conf *conf, const char *name);

/* hk_sender_tls_required - whether DOMAIN (canonical) is one of CONF's
 * tls_required_domains (exact match). */
bool hk_sender_tls_required(const struct hk_sender_conf *conf, const char *domain);

struct hk_node_conf {
	char *name;
	enum hk_role role;
	int line;               /* where the node is defined, for messages */
	union {
		struct hk_router_conf router;
		struct hk_ingress_conf ingress;
		struct hk_sender_conf sender;
	} u;
	char **router_names;    /* ingress/sender: names behind routers[] */
	char *http_host;        /* http: /healthz, /readyz, /metrics; NULL: none */
	uint16_t http_port;
};

/* A domain spread over its top k senders in rendezvous order (hot_domains:). */
struct hk_hot_domain {
	char *domain;           /* canonical: lower-case, IDNA A-label */
	uint32_t k;             /* >= 1; capped at the live senders when used */
};

/* One node's CURVE keys: an entry of the top-level curve: section. */
struct hk_curve_conf {
	char *node;             /* the node's name (every node has one entry) */
	char public_key[41];    /* Z85, 40 characters */
	char *secret_key;       /* Z85 given inline, or NULL */
	char *secret_key_file;  /* or a file holding it (resolved path; read at start) */
	int line;
};

struct hk_config {
	char *path;
	struct hk_node_conf *nodes;
	size_t n_nodes;
	struct hk_tenant_conf *tenants; /* the tenants: section, plus implicit ones */
	size_t n_tenants;
	struct hk_hot_domain *hot_domains; /* the hot_domains: section (cluster-wide) */
	size_t n_hot_domains;
	struct hk_curve_conf *curve; /* the curve: section, or NULL (no CURVE) */
	size_t n_curve;
};

/*
 * hk_config_load - parse and validate FILE. On success returns 0 and *out
 * (caller owns, free with hk_config_free). On failure returns -1 and writes
 * "FILE:LINE: key 'x': what is wrong" into err.
 */
int hk_config_load(const char *path, struct hk_config **out, char *err, size_t errlen);

/* hk_config_free - free a config and NULL the caller's pointer. */
void hk_config_free(struct hk_config **cfg);

/* hk_config_node - the node called NAME, or NULL. */
const struct hk_node_conf *hk_config_node(const struct hk_config *cfg, const char *name);

/* hk_config_use_inproc - rewrite every router endpoint (and the references to
 * them) to inproc://NAME.front / inproc://NAME.back, for `hikyaku all`. */
void hk_config_use_inproc(struct hk_config *cfg);

/* hk_cidr_match - does the socket address fall in the network? (IPv4-mapped
 * IPv6 addresses match IPv4 networks.) */
bool hk_cidr_match(const struct hk_cidr *net, const struct sockaddr *sa);

/* hk_cidr_parse - "10.0.0.0/8", "::1/128", "127.0.0.1" (host). 0 or -1. */
int hk_cidr_parse(const char *s, struct hk_cidr *out);

/* hk_config_hot_k - DOMAIN's k from hot_domains: (DOMAIN canonical), or 1. */
uint32_t hk_config_hot_k(const struct hk_config *cfg, const char *domain);

/* hk_config_tenant - the tenant called NAME, or NULL. */
const struct hk_tenant_conf *hk_config_tenant(const struct hk_config *cfg, const char *name);

/* hk_tenant_owns_sender - may TENANT use ADDR (local@domain, or "" for the
 * null sender) in MAIL FROM? Its sender_domains and their subdomains are
 * allowed; with no sender_domains, any. The null sender is always allowed. */
bool hk_tenant_owns_sender(const struct hk_tenant_conf *t, const char *addr);

/* hk_config_curve - NODE's CURVE keys, or NULL (no curve: section). */
const struct hk_curve_conf *hk_config_curve(const struct hk_config *cfg, const char *node);

/* hk_config_max_frame - the largest ZeroMQ frame a node of this cluster
 * accepts (ZMQ_MAXMSGSIZE): the largest ingress max_message_size plus room
 * for the envelope (HK_FRAME_OVERHEAD). */
#define HK_FRAME_OVERHEAD ((size_t)4 << 20)
size_t hk_config_max_frame(const struct hk_config *cfg);

const char *hk_role_name(enum hk_role role);
const char *hk_listen_mode_name(enum hk_listen_mode mode);

#endif
