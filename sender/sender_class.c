/*
 * sender_class - classify one remote SMTP reply: class, enhanced status
 * code, provider, reason, throttled.
 *
 * A pure module: two static tables (providers, rules) and string scans on
 * the caller's stack. The rule table is read top to bottom and the first
 * match decides, so the order is the policy:
 *   1. our own network and DNS failures (x.4.1 to x.4.4, x.1.10): facts
 *      that no provider phrase may override;
 *   2. the provider's rules (its documented deferral and block replies);
 *   3. enhanced codes precise enough to decide alone (x.1.1, x.2.2, ...);
 *   4. phrases any server uses ("too many connections", "user unknown");
 *   5. the enhanced code's subject (x.1.* addressing, x.7.* policy, ...);
 *   6. the basic code.
 * Reply texts come from providers' postmaster pages and bounce logs; the
 * unit test (tests/unit/test_sender_class.c) holds one real text per rule.
 */

/* System */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* This role */
#include "sender_class.h"

#define NORM_MAX 1024   /* bytes of normalized text kept for phrase matching */

/* ---- providers ---- */

struct provider {
	const char *name;
	const char *group;              /* rules may name the group instead */
	const char *const *suffixes;    /* a domain or MX host equal to one, or under it */
};

#define LIST(...) ((const char *const[]){ __VA_ARGS__, NULL })

static const struct provider providers[] = {
	{ "gmail", NULL, LIST("gmail.com", "googlemail.com", "google.com") },
	{ "yahoo", NULL, LIST("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoodns.net") },
	{ "outlook", NULL, LIST("outlook.com", "hotmail.com", "live.com", "msn.com", "outlook.jp",
	    "hotmail.co.jp", "live.jp") },
	{ "icloud", NULL, LIST("icloud.com", "me.com", "mac.com") },
	{ "docomo", "jp-carrier", LIST("docomo.ne.jp") },
	{ "au", "jp-carrier", LIST("ezweb.ne.jp", "au.com") },
	{ "softbank", "jp-carrier", LIST("softbank.ne.jp", "softbank.jp", "vodafone.ne.jp") },
};

/* under - NAME is SUFFIX or a name under it (case-insensitive; a trailing
 * dot on NAME is ignored). */
static bool
under(const char *name, const char *suffix)
{
	size_t n = strlen(name), k = strlen(suffix);

	if (n > 0 && name[n - 1] == '.')
		n--;
	if (n < k || strncasecmp(name + n - k, suffix, k) != 0)
		return false;
	return n == k || name[n - k - 1] == '.';
}

static const struct provider *
provider_of(const char *domain, const char *mx_host)
{
	const char *names[2] = { domain, mx_host };

	for (size_t i = 0; i < 2; i++) {
		if (names[i] == NULL || names[i][0] == '\0')
			continue;
		for (size_t p = 0; p < sizeof(providers) / sizeof(providers[0]); p++)
			for (const char *const *s = providers[p].suffixes; *s; s++)
				if (under(names[i], *s))
					return &providers[p];
	}
	return NULL;
}

const char *
sender_class_provider(const char *domain, const char *mx_host)
{
	const struct provider *p = provider_of(domain, mx_host);
	return p ? p->name : "";
}

/* ---- rules ---- */

struct rule {
	const char *name;
	const char *provider;           /* NULL: any destination; else a provider or group */
	int code;                       /* 0: any; 2, 4, 5: that class; 200..599: that code */
	const char *status;             /* NULL: any; else a pattern for a status the reply
	                                 * gave: 'x' any class, a final '*' any rest */
	const char *const *text;        /* NULL: any; else one of these phrases (lower case) */
	enum sender_class_reason reason;
};

#define THROTTLE SENDER_REASON_THROTTLE
#define BLOCK SENDER_REASON_BLOCK
#define MAILBOX SENDER_REASON_MAILBOX
#define QUOTA SENDER_REASON_QUOTA
#define POLICY SENDER_REASON_POLICY
#define DNS SENDER_REASON_DNS
#define NETWORK SENDER_REASON_NETWORK
#define OTHER SENDER_REASON_OTHER

static const struct rule rules[] = {
	/* 1. Connections and DNS (our own replies use these, RFC 3463). Only
	 * as deferrals for x.4.1 and x.4.2: Exchange Online answers unknown
	 * recipients with 550 5.4.1. */
	{ "status-no-answer", NULL, 4, "4.4.1", NULL, NETWORK },
	{ "status-bad-connection", NULL, 4, "4.4.2", NULL, NETWORK },
	{ "status-dns-failure", NULL, 0, "x.4.3", NULL, DNS },
	{ "status-unable-to-route", NULL, 0, "x.4.4", NULL, DNS },
	{ "status-null-mx", NULL, 0, "x.1.10", NULL, DNS },     /* RFC 7505 */

	/* 2. Providers. Gmail: support.google.com/a/answer/3726730. */
	{ "gmail-rate", "gmail", 4, "4.7.28", NULL, THROTTLE },
	{ "gmail-unusual-rate", "gmail", 4, NULL, LIST("unusual rate"), THROTTLE },
	{ "gmail-recipient-rate", "gmail", 4, NULL,
	    LIST("receiving mail at a rate", "receiving mail too quickly", "relay limit"), THROTTLE },
	{ "gmail-reputation", "gmail", 0, NULL,
	    LIST("low reputation", "reputation of the sending", "unsolicited mail"), BLOCK },
	/* Yahoo and AOL: senders.yahooinc.com/smtp-error-codes. TS03 and
	 * TSS09 say retrying will not succeed: a block, not a slowdown. */
	{ "yahoo-blocked", "yahoo", 0, NULL,
	    LIST("ts03", "tss09", "permanently deferred", "[bl2"), BLOCK },
	{ "yahoo-deferred", "yahoo", 4, NULL,
	    LIST("tss04", "tss05", "ts01", "ts02", "unexpected volume", "temporarily deferred",
	    "user complaints", "max message", "max connection"), THROTTLE },
	{ "yahoo-no-account", "yahoo", 5, NULL, LIST("doesn't have a", "does not have a"), MAILBOX },
	/* Outlook.com, Hotmail, Exchange Online: aka.ms/postmaster. 4.7.500
	 * to 4.7.699 are its throttles; 4.7.650/651 name IP reputation. */
	{ "outlook-reputation", "outlook", 4, "4.7.6*", LIST("reputation"), BLOCK },
	{ "outlook-busy", "outlook", 4, "4.7.5*", NULL, THROTTLE },
	{ "outlook-limit", "outlook", 4, "4.7.6*", NULL, THROTTLE },
	{ "outlook-busy-text", "outlook", 4, NULL,
	    LIST("server busy", "rp-001", "rp-002", "rp-003", "rate limit"), THROTTLE },
	{ "outlook-blocklist", "outlook", 0, NULL,
	    LIST("s3150", "s3140", "s3114", "block list", "weren't sent", "blocked"), BLOCK },
	/* Exchange Online answers unknown users with 5.4.1 (directory based
	 * edge blocking) or 5.5.0 "mailbox unavailable". */
	{ "outlook-unknown", "outlook", 5, NULL,
	    LIST("mailbox unavailable", "recipient not found", "access denied"), MAILBOX },
	/* iCloud: support.apple.com/en-us/HT204137. */
	{ "icloud-rate", "icloud", 4, "4.7.1", LIST("rate", "too many", "volume", "try again later",
	    "try later"), THROTTLE },
	{ "icloud-try-later", "icloud", 4, NULL, LIST("try later", "excessive volume",
	    "too many messages"), THROTTLE },
	/* docomo, au and SoftBank refuse bulk senders at connection with 421
	 * and with 4xx "too many ..." or "... temporarily"; docomo says a full
	 * mailbox with 552 "Too much mail data". */
	{ "jp-carrier-421", "jp-carrier", 421, NULL, NULL, THROTTLE },
	{ "jp-carrier-busy", "jp-carrier", 4, NULL,
	    LIST("too many", "temporar", "try again", "busy", "not available", "exceed",
	    "limit", "rate"), THROTTLE },
	{ "jp-carrier-full", "jp-carrier", 5, NULL,
	    LIST("too much mail data", "mailbox full", "box full"), QUOTA },

	/* 3. Enhanced codes that decide alone. */
	{ "status-mailbox", NULL, 0, "x.1.1", NULL, MAILBOX },
	{ "status-no-domain", NULL, 0, "x.1.2", NULL, DNS },
	{ "status-bad-address", NULL, 0, "x.1.3", NULL, MAILBOX },
	{ "status-quota", NULL, 0, "x.2.2", NULL, QUOTA },
	{ "status-too-big", NULL, 0, "x.2.3", NULL, POLICY },
	{ "status-not-accepting", NULL, 0, "x.3.2", NULL, THROTTLE },
	{ "status-size", NULL, 0, "x.3.4", NULL, POLICY },
	{ "status-congestion", NULL, 0, "x.4.5", NULL, THROTTLE },
	{ "status-too-many-rcpts", NULL, 0, "x.5.3", NULL, THROTTLE },
	{ "status-flood", NULL, 0, "x.7.28", NULL, THROTTLE },
	/* Authentication (RFC 7372 x.7.20 to x.7.26; RFC 7505 x.7.27): policy,
	 * even when the text says "blocked". */
	{ "status-auth", NULL, 0, "x.7.2*", NULL, POLICY },

	/* 4. Phrases. Greylisting first: it says "try again later" too, but
	 * asks for one later retry, not for less traffic. */
	{ "text-greylist", NULL, 4, NULL,
	    LIST("greylist", "graylist", "grey-list", "gray-list", "grey list", "gray list"), POLICY },
	{ "text-throttle", NULL, 0, NULL,
	    LIST("too many connections", "too many concurrent", "too many sessions",
	    "too many simultaneous", "connection limit", "connection rate", "too many messages",
	    "too many mails", "too many recipients", "rate limit", "ratelimit", "rate-limit",
	    "rate exceeded", "exceeded the rate", "receiving mail at a rate", "too quickly",
	    "too fast", "unusual rate", "excessive volume", "unexpected volume", "slow down",
	    "server busy", "system busy", "server is busy", "congestion", "throttl"), THROTTLE },
	{ "text-421-later", NULL, 421, NULL,
	    LIST("try again later", "try later", "retry later", "try again in"), THROTTLE },
	{ "text-quota", NULL, 0, NULL,
	    LIST("over quota", "quota exceeded", "exceeded quota", "exceeds quota", "mailbox full",
	    "mailbox is full", "mailbox size limit", "exceeded storage allocation",
	    "too much mail data", "out of storage", "storage space"), QUOTA },
	{ "text-content", NULL, 0, NULL,
	    LIST("content", "virus", "malware", "phishing", "message size", "too large", "too big"),
	    POLICY },
	{ "text-block", NULL, 0, NULL,
	    LIST("blocked", "block list", "blocklist", "blacklist", "denylist", "spamhaus",
	    "spamcop", "barracuda", "dnsbl", "reputation", "banned", "listed at", "listed in",
	    "listed on"), BLOCK },
	{ "text-mailbox", NULL, 0, NULL,
	    LIST("user unknown", "unknown user", "no such user", "no such recipient",
	    "no such mailbox", "unknown recipient", "recipient unknown", "invalid recipient",
	    "invalid mailbox", "mailbox not found", "user not found", "no mailbox",
	    "mailbox unavailable", "account disabled", "account has been disabled",
	    "mailbox disabled", "not a valid mailbox"), MAILBOX },
	{ "text-does-not-exist", NULL, 550, NULL, LIST("does not exist"), MAILBOX },
	{ "text-policy", NULL, 0, NULL,
	    LIST("dmarc", "spf", "dkim", "authenticat", "tls required", "requires tls", "starttls",
	    "encryption", "relay", "not permitted", "policy", "not allowed", "whitelist",
	    "allowlist", "spam"), POLICY },

	/* 5. The enhanced code's subject (RFC 3463 section 3). */
	{ "subject-addressing", NULL, 0, "x.1.*", NULL, MAILBOX },
	{ "subject-mailbox", NULL, 0, "x.2.*", NULL, MAILBOX },
	{ "subject-network", NULL, 0, "x.4.*", NULL, NETWORK },
	{ "subject-content", NULL, 0, "x.6.*", NULL, POLICY },
	{ "subject-policy", NULL, 0, "x.7.*", NULL, POLICY },

	/* 6. The basic code (RFC 5321 4.2.3). */
	{ "code-storage", NULL, 552, NULL, NULL, QUOTA },
};

/* status_match - does STATUS ("4.7.28") fit PATTERN ("x.7.28", "4.7.5*")? */
static bool
status_match(const char *pattern, const char *status)
{
	for (; *pattern; pattern++, status++) {
		if (*pattern == '*')
			return true;
		if (*status == '\0')
			return false;
		if (*pattern != 'x' && *pattern != *status)
			return false;
	}
	return *status == '\0';
}

static bool
rule_match(const struct rule *r, const struct provider *p, int code, int cls,
    const char *status, bool given, const char *norm)
{
	if (r->provider != NULL && (p == NULL || (strcmp(r->provider, p->name) != 0 &&
	    (p->group == NULL || strcmp(r->provider, p->group) != 0))))
		return false;
	if (r->code >= 100 ? r->code != code : r->code != 0 && r->code != cls)
		return false;
	if (r->status != NULL && (!given || !status_match(r->status, status)))
		return false;
	if (r->text != NULL) {
		const char *const *t;
		for (t = r->text; *t; t++)
			if (strstr(norm, *t) != NULL)
				break;
		if (*t == NULL)
			return false;
	}
	return true;
}

/* ---- text ---- */

/* code_prefix - length of a leading "DDD", "DDD-" or "DDD " on S (3 or 4),
 * or 0. */
static size_t
code_prefix(const char *s, size_t len)
{
	if (len < 3 || !isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) ||
	    !isdigit((unsigned char)s[2]))
		return 0;
	if (len == 3)
		return 3;
	if (s[3] == '-' || s[3] == ' ')
		return 4;
	return 0;
}

/* enhanced_len - length of an RFC 3463 code class.subject.detail at S
 * (class 2, 4 or 5; subject and detail 1 to 3 digits; not followed by a
 * digit or a dot, so "4.16.55.1" is none), or 0. */
static size_t
enhanced_len(const char *s, size_t len)
{
	size_t i = 0, d;

	if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	i = 2;
	for (int part = 0; part < 2; part++) {
		for (d = 0; i < len && isdigit((unsigned char)s[i]) && d < 4; i++, d++)
			;
		if (d == 0 || d > 3)
			return 0;
		if (part == 0) {
			if (i >= len || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < len && (isdigit((unsigned char)s[i]) || s[i] == '.'))
		return 0;
	return i;
}

/* normalize - the text for phrase matching into OUT (NORM_MAX): lower
 * case, each line's code prefix and every standalone enhanced code taken
 * out, runs of white space as one space. */
static void
normalize(const char *text, char *out)
{
	size_t o = 0;
	const char *line = text;

	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		size_t i = code_prefix(line, len);

		while (i < len) {
			size_t start, tl;
			while (i < len && isspace((unsigned char)line[i]))
				i++;
			start = i;
			while (i < len && !isspace((unsigned char)line[i]))
				i++;
			tl = i - start;
			if (tl == 0 || enhanced_len(line + start, tl) == tl)
				continue;
			if (o + tl + 2 > NORM_MAX)
				goto done;
			if (o > 0)
				out[o++] = ' ';
			for (size_t k = 0; k < tl; k++)
				out[o++] = (char)tolower((unsigned char)line[start + k]);
		}
		if (nl == NULL)
			break;
		line = nl + 1;
	}
done:
	out[o] = '\0';
}

/* parse_status - the enhanced code at the start of TEXT (after an optional
 * basic code), with its class replaced by CLS, into OUT. */
static bool
parse_status(const char *text, char cls, char out[SENDER_CLASS_STATUS_MAX])
{
	const char *s = text;
	size_t len, n;

	while (isspace((unsigned char)*s))
		s++;
	len = strlen(s);
	n = code_prefix(s, len);
	s += n;
	len -= n;
	while (len > 0 && *s == ' ') {
		s++;
		len--;
	}
	n = enhanced_len(s, len);
	if (n == 0 || n >= SENDER_CLASS_STATUS_MAX)
		return false;
	memcpy(out, s, n);
	out[n] = '\0';
	out[0] = cls;
	return true;
}

/* ---- the classifier ---- */

void
sender_class_reply(int code, const char *text, const char *domain, const char *mx_host,
    struct sender_class *out)
{
	const struct provider *p = provider_of(domain, mx_host);
	char norm[NORM_MAX];
	char cls;

	if (text == NULL)
		text = "";
	memset(out, 0, sizeof(*out));
	switch (code / 100) {
	case 2: out->kind = SENDER_CLASS_DELIVERED; cls = '2'; break;
	case 5: out->kind = SENDER_CLASS_BOUNCED; cls = '5'; break;
	default: out->kind = SENDER_CLASS_DEFERRED; cls = '4'; break;
	}
	out->provider = p ? p->name : "";
	out->status_given = parse_status(text, cls, out->status);
	if (!out->status_given)
		snprintf(out->status, sizeof(out->status), "%c.0.0", cls);
	if (out->kind == SENDER_CLASS_DELIVERED) {
		out->reason = SENDER_REASON_NONE;
		out->rule = "delivered";
		return;
	}
	normalize(text, norm);
	out->reason = OTHER;
	out->rule = "none";
	for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
		if (rule_match(&rules[i], p, code, cls - '0', out->status, out->status_given,
		    norm)) {
			out->reason = rules[i].reason;
			out->rule = rules[i].name;
			break;
		}
	}
	out->throttled = out->kind == SENDER_CLASS_DEFERRED &&
	    (out->reason == THROTTLE || out->reason == BLOCK);
}

const char *
sender_class_reason_name(enum sender_class_reason r)
{
	switch (r) {
	case SENDER_REASON_NONE: return "none";
	case SENDER_REASON_THROTTLE: return "throttle";
	case SENDER_REASON_BLOCK: return "block";
	case SENDER_REASON_MAILBOX: return "mailbox";
	case SENDER_REASON_QUOTA: return "quota";
	case SENDER_REASON_POLICY: return "policy";
	case SENDER_REASON_DNS: return "dns";
	case SENDER_REASON_NETWORK: return "network";
	case SENDER_REASON_OTHER: return "other";
	}
	return "other";
}

const char *
sender_class_kind_name(enum sender_class_kind k)
{
	switch (k) {
	case SENDER_CLASS_DELIVERED: return "delivered";
	case SENDER_CLASS_DEFERRED: return "deferred";
	case SENDER_CLASS_BOUNCED: return "bounced";
	}
	return "deferred";
}
