/* sender_class: real SMTP replies of the big providers and of common MTAs,
 * and our own failure texts, classified. Texts are as the providers'
 * postmaster pages and bounce logs show them (addresses and ids replaced). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "sender_class.h"

#define D SENDER_CLASS_DELIVERED
#define F SENDER_CLASS_DEFERRED
#define B SENDER_CLASS_BOUNCED

struct tcase {
	int code;
	const char *text;
	const char *domain, *mx;
	enum sender_class_kind kind;
	const char *status;
	const char *reason;
	bool throttled;
	const char *provider;
	const char *rule;               /* NULL: not checked */
};

#define GMAIL "gmail.com", "gmail-smtp-in.l.google.com"
#define WORKSPACE "customer.example", "aspmx.l.google.com"
#define YAHOO "yahoo.com", "mta5.am0.yahoodns.net"
#define AOL "aol.com", "mx-aol.mail.gm0.yahoodns.net"
#define OUTLOOK "outlook.com", "outlook-com.olc.protection.outlook.com"
#define HOTMAIL "hotmail.co.jp", "hotmail-com.olc.protection.outlook.com"
#define M365 "contoso.example", "contoso-example.mail.protection.outlook.com"
#define ICLOUD "icloud.com", "mx01.mail.icloud.com"
#define DOCOMO "docomo.ne.jp", "mfsmax.docomo.ne.jp"
#define EZWEB "ezweb.ne.jp", "lsean.ezweb.ne.jp"
#define AUCOM "au.com", "mx.au.com"
#define SOFTBANK "i.softbank.jp", "mx.i.softbank.jp"
#define OTHERMX "example.net", "mx.example.net"
#define LOCAL "a.test", "mx.a.test"

static const struct tcase cases[] = {
	/* ---- Gmail ---- */
	{ 421, "421-4.7.28 [203.0.113.5      15] Our system has detected an unusual rate of\r\n"
	    "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
	    "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
	    "421-4.7.28 rate limited. Please visit\r\n"
	    "421 4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError x1si - gsmtp",
	    GMAIL, F, "4.7.28", "throttle", true, "gmail", "gmail-rate" },
	/* The same as sender_reply joins it. */
	{ 421, "421 4.7.28 [203.0.113.5 15] Our system has detected an unusual rate of 4.7.28 "
	    "unsolicited mail originating from your IP address. To protect our 4.7.28 users from "
	    "spam, mail sent from your IP address has been temporarily 4.7.28 rate limited.",
	    GMAIL, F, "4.7.28", "throttle", true, "gmail", "gmail-rate" },
	{ 421, "421 4.7.0 [203.0.113.5] Our system has detected an unusual rate of unsolicited "
	    "mail originating from your IP address. To protect our users from spam, mail sent "
	    "from your IP address has been temporarily blocked.",
	    WORKSPACE, F, "4.7.0", "throttle", true, "gmail", "gmail-unusual-rate" },
	{ 450, "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\r\n"
	    "450-4.2.1 prevents additional messages from being delivered. Please resend your\r\n"
	    "450-4.2.1 message at a later time. If the user is able to receive mail at that\r\n"
	    "450 4.2.1 time, your message will be delivered. - gsmtp",
	    GMAIL, F, "4.2.1", "throttle", true, "gmail", "gmail-recipient-rate" },
	{ 450, "450 4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error.",
	    WORKSPACE, F, "4.2.1", "throttle", true, "gmail", "gmail-recipient-rate" },
	/* Over quota is the mailbox, not us: no slowdown. */
	{ 452, "452-4.2.2 The email account that you tried to reach is over quota. Please direct\r\n"
	    "452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
	    GMAIL, F, "4.2.2", "quota", false, "gmail", "status-quota" },
	{ 550, "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
	    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
	    "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
	    GMAIL, B, "5.1.1", "mailbox", false, "gmail", "status-mailbox" },
	{ 550, "550-5.7.1 [203.0.113.5] Our system has detected an unusual rate of\r\n"
	    "550-5.7.1 unsolicited mail originating from your IP address. To protect our\r\n"
	    "550 5.7.1 users from spam, mail sent from your IP address has been blocked. - gsmtp",
	    GMAIL, B, "5.7.1", "block", false, "gmail", "gmail-reputation" },
	{ 421, "421-4.7.0 [203.0.113.5] Our system has detected that this message is\r\n"
	    "421-4.7.0 suspicious due to the very low reputation of the sending domain. To\r\n"
	    "421 4.7.0 best protect our users from spam, the message has been blocked. - gsmtp",
	    GMAIL, F, "4.7.0", "block", true, "gmail", "gmail-reputation" },
	{ 421, "421 4.7.0 [203.0.113.5] Our system has detected that this message is suspicious "
	    "due to the nature of the content and/or the links within. - gsmtp",
	    GMAIL, F, "4.7.0", "policy", false, "gmail", "text-content" },
	{ 550, "550-5.7.26 This mail is unauthenticated, which poses a security risk to the\r\n"
	    "550-5.7.26 sender and Gmail users, and has been blocked. The sender must\r\n"
	    "550 5.7.26 authenticate with at least one of SPF or DKIM. - gsmtp",
	    GMAIL, B, "5.7.26", "policy", false, "gmail", "status-auth" },
	{ 421, "421 4.7.0 TLS required for RCPT domain, closing connection.",
	    WORKSPACE, F, "4.7.0", "policy", false, "gmail", "text-policy" },
	{ 421, "421 4.7.0 Try again later, closing connection. (EHLO) x1si - gsmtp",
	    GMAIL, F, "4.7.0", "throttle", true, "gmail", "text-421-later" },
	{ 421, "421 4.4.5 Server busy, try again later.",
	    GMAIL, F, "4.4.5", "throttle", true, "gmail", "status-congestion" },
	{ 452, "452 4.5.3 Your message has too many recipients. - gsmtp",
	    GMAIL, F, "4.5.3", "throttle", true, "gmail", "status-too-many-rcpts" },
	{ 250, "250 2.0.0 OK  1700000000 x1si12345abc.12 - gsmtp",
	    GMAIL, D, "2.0.0", "none", false, "gmail", "delivered" },

	/* ---- Yahoo and AOL ---- */
	{ 421, "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected "
	    "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
	    YAHOO, F, "4.7.0", "throttle", true, "yahoo", "yahoo-deferred" },
	{ 421, "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected "
	    "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
	    AOL, F, "4.7.0", "throttle", true, "yahoo", "yahoo-deferred" },
	{ 421, "421 4.7.0 [TS01] Messages from 203.0.113.5 temporarily deferred due to user "
	    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
	    YAHOO, F, "4.7.0", "throttle", true, "yahoo", "yahoo-deferred" },
	{ 421, "421 Message from (203.0.113.5) temporarily deferred - 4.16.50. [TS02]",
	    YAHOO, F, "4.0.0", "throttle", true, "yahoo", "yahoo-deferred" },
	{ 421, "421 Max message per connection reached, closing transmission channel",
	    YAHOO, F, "4.0.0", "throttle", true, "yahoo", "yahoo-deferred" },
	{ 421, "421 4.7.1 [TS03] All messages from 203.0.113.5 will be permanently deferred; "
	    "Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
	    YAHOO, F, "4.7.1", "block", true, "yahoo", "yahoo-blocked" },
	{ 553, "553 5.7.2 [TSS09] All messages from 203.0.113.5 will be permanently deferred; "
	    "Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
	    YAHOO, B, "5.7.2", "block", false, "yahoo", "yahoo-blocked" },
	{ 553, "553 5.7.1 [BL21] Connections will not be accepted from 203.0.113.5, because the ip "
	    "is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
	    YAHOO, B, "5.7.1", "block", false, "yahoo", "yahoo-blocked" },
	{ 554, "554 delivery error: dd This user doesn't have a yahoo.com account "
	    "(someone@yahoo.com) [0] - mta1234.mail.bf1.yahoo.com",
	    YAHOO, B, "5.0.0", "mailbox", false, "yahoo", "yahoo-no-account" },
	{ 554, "554 5.7.9 Message not accepted for policy reasons.  See "
	    "https://postmaster.yahooinc.com/error-codes",
	    YAHOO, B, "5.7.9", "policy", false, "yahoo", "text-policy" },

	/* ---- Outlook.com, Hotmail, Exchange Online ---- */
	{ 451, "451 4.7.500 Server busy. Please try again later from [203.0.113.5]. (S77714) "
	    "[Name=Protocol Filter Agent][AGT=PFA][MxId=11BB0A1C2D3E4F56] "
	    "[AM4PEPF00027A5F.eurprd04.prod.outlook.com 2025-06-01T10:00:00.000Z 08DC0000]",
	    OUTLOOK, F, "4.7.500", "throttle", true, "outlook", "outlook-busy" },
	{ 451, "451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to "
	    "IP reputation. For e-mail delivery information, see https://aka.ms/postmaster (S775) "
	    "[Name=Protocol Filter Agent][AGT=PFA]",
	    HOTMAIL, F, "4.7.650", "block", true, "outlook", "outlook-reputation" },
	{ 451, "451 4.7.651 The mail server [203.0.113.5] has been temporarily rate limited due to "
	    "IP reputation. (S3114)",
	    HOTMAIL, F, "4.7.651", "block", true, "outlook", "outlook-reputation" },
	{ 451, "451 4.7.652 The mail server [203.0.113.5] has exceeded the maximum number of "
	    "connections. (S3115)",
	    OUTLOOK, F, "4.7.652", "throttle", true, "outlook", "outlook-limit" },
	{ 421, "421 RP-001 (COL004-MC1F35) Unfortunately, some messages from 203.0.113.5 weren't "
	    "sent. Please try again. We have limits for how many messages can be sent per hour "
	    "and per day.",
	    OUTLOOK, F, "4.0.0", "throttle", true, "outlook", "outlook-busy-text" },
	{ 421, "421 RP-002 (COL004-MC1F35) Unfortunately, some messages from 203.0.113.5 weren't "
	    "sent. Please try again. We have limits for how many connections can be made.",
	    OUTLOOK, F, "4.0.0", "throttle", true, "outlook", "outlook-busy-text" },
	{ 550, "550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact "
	    "your Internet service provider since part of their network is on our block list "
	    "(S3150). You can also refer your provider to "
	    "http://mail.live.com/mail/troubleshooting.aspx#errors. "
	    "[DB3EUR04FT007.eop-eur04.prod.protection.outlook.com]",
	    OUTLOOK, B, "5.7.1", "block", false, "outlook", "outlook-blocklist" },
	{ 451, "451 4.7.0 Unfortunately, messages from [203.0.113.5] weren't sent. Please try "
	    "again later (S3140)",
	    OUTLOOK, F, "4.7.0", "block", true, "outlook", "outlook-blocklist" },
	{ 550, "550 5.5.0 Requested action not taken: mailbox unavailable "
	    "(1234567890:A1B2C3D4:SN1NAM02FT012.eop-nam02.prod.protection.outlook.com)",
	    OUTLOOK, B, "5.5.0", "mailbox", false, "outlook", "outlook-unknown" },
	{ 550, "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
	    "[DM3NAM02FT003.eop-nam02.prod.protection.outlook.com]",
	    M365, B, "5.4.1", "mailbox", false, "outlook", "outlook-unknown" },

	/* ---- iCloud ---- */
	{ 421, "421 4.7.1 Messages to someone@icloud.com deferred due to excessive volume. Try again "
	    "later - https://support.apple.com/en-us/HT204137",
	    ICLOUD, F, "4.7.1", "throttle", true, "icloud", "icloud-rate" },
	{ 451, "451 4.7.1 Service unavailable - try again later",
	    ICLOUD, F, "4.7.1", "throttle", true, "icloud", "icloud-rate" },
	{ 452, "452 try later", "me.com", "mx01.mail.icloud.com",
	    F, "4.0.0", "throttle", true, "icloud", "icloud-try-later" },
	{ 421, "421 4.7.0 me.com Error: too many errors", "me.com", "mx02.mail.icloud.com",
	    F, "4.7.0", "policy", false, "icloud", "subject-policy" },
	{ 550, "550 5.1.1 <someone@icloud.com>: user does not exist",
	    ICLOUD, B, "5.1.1", "mailbox", false, "icloud", "status-mailbox" },
	{ 550, "550 5.7.1 [CS01] Message rejected due to local policy. Please visit "
	    "https://support.apple.com/en-us/HT204137",
	    ICLOUD, B, "5.7.1", "policy", false, "icloud", "text-policy" },

	/* ---- docomo, au, SoftBank ---- */
	{ 421, "421 4.7.0 Too many connections", DOCOMO,
	    F, "4.7.0", "throttle", true, "docomo", "jp-carrier-421" },
	{ 421, "421 mfsmax.docomo.ne.jp Service not available, closing transmission channel",
	    DOCOMO, F, "4.0.0", "throttle", true, "docomo", "jp-carrier-421" },
	{ 451, "451 4.3.2 Resources temporarily unavailable. Please try again later",
	    DOCOMO, F, "4.3.2", "throttle", true, "docomo", "jp-carrier-busy" },
	{ 550, "550 Unknown user someone@docomo.ne.jp",
	    DOCOMO, B, "5.0.0", "mailbox", false, "docomo", "text-mailbox" },
	{ 552, "552 Too much mail data someone@docomo.ne.jp",
	    DOCOMO, B, "5.0.0", "quota", false, "docomo", "jp-carrier-full" },
	{ 500, "500 Line Too Long", DOCOMO, B, "5.0.0", "other", false, "docomo", "none" },
	{ 421, "421 4.7.0 lsean.ezweb.ne.jp Too many messages", EZWEB,
	    F, "4.7.0", "throttle", true, "au", "jp-carrier-421" },
	{ 450, "450 4.7.1 Too many messages for this session, try again later", AUCOM,
	    F, "4.7.1", "throttle", true, "au", "jp-carrier-busy" },
	{ 550, "550 <someone@ezweb.ne.jp>: User unknown", EZWEB,
	    B, "5.0.0", "mailbox", false, "au", "text-mailbox" },
	{ 554, "554 <someone@@ezweb.ne.jp>: Relay access denied", EZWEB,
	    B, "5.0.0", "policy", false, "au", "text-policy" },
	{ 550, "550 Invalid recipient: <someone@i.softbank.jp>", SOFTBANK,
	    B, "5.0.0", "mailbox", false, "softbank", "text-mailbox" },
	{ 421, "421 4.7.0 Too many connections, try again later", "softbank.ne.jp",
	    "mx.softbank.ne.jp", F, "4.7.0", "throttle", true, "softbank", "jp-carrier-421" },
	{ 553, "553 client.example does not exist", SOFTBANK,
	    B, "5.0.0", "other", false, "softbank", "none" },

	/* ---- Common MTAs ---- */
	{ 550, "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in local "
	    "recipient table", OTHERMX, B, "5.1.1", "mailbox", false, "", "status-mailbox" },
	{ 450, "450 4.2.0 <x@example.net>: Recipient address rejected: Greylisted, see "
	    "http://postgrey.schweikert.ch/help/example.net.html",
	    OTHERMX, F, "4.2.0", "policy", false, "", "text-greylist" },
	{ 554, "554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using "
	    "zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.5",
	    OTHERMX, B, "5.7.1", "block", false, "", "text-block" },
	{ 421, "421 mx.example.net: Too many concurrent SMTP connections; please try again later.",
	    OTHERMX, F, "4.0.0", "throttle", true, "", "text-throttle" },
	{ 421, "421-4.7.0 mx.example.net Too many\r\n421 4.7.0 connections from your IP",
	    OTHERMX, F, "4.7.0", "throttle", true, "", "text-throttle" },
	{ 452, "452 4.5.3 Too many recipients", OTHERMX,
	    F, "4.5.3", "throttle", true, "", "status-too-many-rcpts" },
	{ 421, "421 4.3.2 System not accepting network messages", OTHERMX,
	    F, "4.3.2", "throttle", true, "", "status-not-accepting" },
	{ 451, "451 4.3.2 System busy, try again later", OTHERMX,
	    F, "4.3.2", "throttle", true, "", "status-not-accepting" },
	{ 421, "421 4.7.28 Mail flood detected, rate limited", OTHERMX,
	    F, "4.7.28", "throttle", true, "", "status-flood" },
	{ 552, "552 5.2.3 Message exceeds maximum fixed size", OTHERMX,
	    B, "5.2.3", "policy", false, "", "status-too-big" },
	{ 550, "550 Requested action not taken: recipient does not exist", OTHERMX,
	    B, "5.0.0", "mailbox", false, "", "text-does-not-exist" },
	{ 550, "550 5.1.6 Recipient has moved", OTHERMX,
	    B, "5.1.6", "mailbox", false, "", "subject-addressing" },
	{ 552, "552 5.2.2 Mailbox full", OTHERMX, B, "5.2.2", "quota", false, "", "status-quota" },
	{ 552, "552 5.3.4 Message size exceeds fixed limit", OTHERMX,
	    B, "5.3.4", "policy", false, "", "status-size" },
	{ 552, "552 Requested mail action aborted: exceeded storage allocation", OTHERMX,
	    B, "5.0.0", "quota", false, "", "text-quota" },
	{ 552, "552 sorry", OTHERMX, B, "5.0.0", "quota", false, "", "code-storage" },
	{ 550, "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's "
	    "DMARC policy", OTHERMX, B, "5.7.26", "policy", false, "", "status-auth" },
	{ 451, "451 4.7.1 Please try again later", OTHERMX,
	    F, "4.7.1", "policy", false, "", "subject-policy" },
	{ 421, "421 Service not available, closing transmission channel", OTHERMX,
	    F, "4.0.0", "other", false, "", "none" },
	{ 451, "451 4.3.0 Mail server temporarily rejected message.", OTHERMX,
	    F, "4.3.0", "other", false, "", "none" },
	/* Yahoo's own 4.16.55.1 is not an RFC 3463 code. */
	{ 421, "421 Message temporarily deferred - 4.16.50", OTHERMX,
	    F, "4.0.0", "other", false, "", "none" },
	/* The basic code decides the class of the status. */
	{ 550, "550 4.1.1 no such user", OTHERMX, B, "5.1.1", "mailbox", false, "", "status-mailbox" },
	{ 450, "4.2.1 mailbox busy", OTHERMX, F, "4.2.1", "mailbox", false, "", "subject-mailbox" },
	{ 550, "550 5.4.1 no answer", OTHERMX, B, "5.4.1", "network", false, "", "subject-network" },
	{ 250, "250 2.1.5 Ok", OTHERMX, D, "2.1.5", "none", false, "", "delivered" },
	{ 251, "251 User not local; will forward", OTHERMX, D, "2.0.0", "none", false, "", NULL },

	/* ---- Our own texts (sender_smtp, sender_sched) ---- */
	{ 451, "451 4.4.1 connect to 127.0.0.10:25 failed: connection refused", LOCAL,
	    F, "4.4.1", "network", false, "", "status-no-answer" },
	{ 451, "451 4.4.1 connect to 127.0.0.10:25 failed: resource temporarily unavailable",
	    DOCOMO, F, "4.4.1", "network", false, "docomo", "status-no-answer" },
	{ 451, "451 4.4.2 timeout waiting for the reply to end of data with 127.0.0.10:25 "
	    "(message may be sent more than once)", LOCAL,
	    F, "4.4.2", "network", false, "", "status-bad-connection" },
	{ 451, "451 4.5.0 protocol error in RCPT with 127.0.0.10:25: unexpected reply", LOCAL,
	    F, "4.5.0", "other", false, "", "none" },
	{ 451, "451 4.4.3 DNS lookup for bad.test failed: bad.test: MX lookup failed: "
	    "Server failure", "bad.test", "", F, "4.4.3", "dns", false, "", "status-dns-failure" },
	{ 451, "451 4.4.4 no address for the mail exchangers of x.test: x.test: no usable MX host",
	    "x.test", NULL, F, "4.4.4", "dns", false, "", "status-unable-to-route" },
	{ 550, "550 5.1.10 domain nullmx.test accepts no mail (null MX)", "nullmx.test", "",
	    B, "5.1.10", "dns", false, "", "status-null-mx" },
	{ 550, "550 5.1.2 domain nx.test does not exist: nx.test: domain not found", "nx.test", "",
	    B, "5.1.2", "dns", false, "", "status-no-domain" },
	/* The greeting of a throttling server, wrapped in our 4.4.0. */
	{ 451, "451 4.4.0 127.0.0.10:25 refused to talk to me: 421 4.7.0 Too many connections",
	    OTHERMX, F, "4.4.0", "throttle", true, "", "text-throttle" },
	{ 451, "451 4.4.0 127.0.0.10:25 refused to talk to me: 554 5.7.1 blocked", OTHERMX,
	    F, "4.4.0", "block", true, "", "text-block" },
	{ 501, "501 5.1.3 bad recipient address syntax", LOCAL,
	    B, "5.1.3", "mailbox", false, "", "status-bad-address" },
	{ 550, "550 5.6.7 server mx.a.test does not support SMTPUTF8, the message needs it", LOCAL,
	    B, "5.6.7", "policy", false, "", "subject-content" },
	{ 554, "554 5.3.0 message data missing from the queue", LOCAL,
	    B, "5.3.0", "other", false, "", "none" },
	{ 0, "", LOCAL, F, "4.0.0", "other", false, "", "none" },
	{ 0, NULL, NULL, NULL, F, "4.0.0", "other", false, "", "none" },
};

static void
test_cases(void **state)
{
	int failed = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct tcase *c = &cases[i];
		struct sender_class out;

		sender_class_reply(c->code, c->text, c->domain, c->mx, &out);
		if (out.kind != c->kind || strcmp(out.status, c->status) != 0 ||
		    strcmp(sender_class_reason_name(out.reason), c->reason) != 0 ||
		    out.throttled != c->throttled || strcmp(out.provider, c->provider) != 0 ||
		    (c->rule != NULL && strcmp(out.rule, c->rule) != 0)) {
			fprintf(stderr, "case %zu (%d %.60s...):\n  want %s %s %s throttled=%d %s %s\n"
			    "  got  %s %s %s throttled=%d %s %s\n", i, c->code, c->text ? c->text : "",
			    sender_class_kind_name(c->kind), c->status, c->reason, c->throttled,
			    c->provider, c->rule ? c->rule : "*", sender_class_kind_name(out.kind),
			    out.status, sender_class_reason_name(out.reason), out.throttled,
			    out.provider, out.rule);
			failed++;
		}
	}
	assert_int_equal(failed, 0);
}

static void
test_status_given(void **state)
{
	struct sender_class out;

	(void)state;
	sender_class_reply(250, "250-2.0.0 Ok\r\n250 more", NULL, NULL, &out);
	assert_true(out.status_given);
	assert_string_equal(out.status, "2.0.0");
	sender_class_reply(550, "550  5.1.1 two spaces", NULL, NULL, &out);
	assert_true(out.status_given);
	assert_string_equal(out.status, "5.1.1");
	sender_class_reply(550, "5.7.1 no basic code in the text", NULL, NULL, &out);
	assert_true(out.status_given);
	assert_string_equal(out.status, "5.7.1");
	sender_class_reply(550, "550 5.999.999 widest", NULL, NULL, &out);
	assert_true(out.status_given);
	assert_string_equal(out.status, "5.999.999");
	/* Not RFC 3463 codes: derived instead. */
	static const char *const bad[] = {
		"550 5.1234.1 x", "550 5.1.1234 x", "550 6.1.1 x", "550 5.1. x", "550 5..1 x",
		"550 5.1.1.1 x", "550 5.1", "550 x 5.1.1", "550-", "550", "55", "",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sender_class_reply(550, bad[i], NULL, NULL, &out);
		assert_false(out.status_given);
		assert_string_equal(out.status, "5.0.0");
	}
	sender_class_reply(421, "421", NULL, NULL, &out);
	assert_string_equal(out.status, "4.0.0");
	sender_class_reply(354, "354 go ahead", NULL, NULL, &out);
	assert_int_equal(out.kind, SENDER_CLASS_DEFERRED);
	assert_string_equal(out.status, "4.0.0");
}

static void
test_provider(void **state)
{
	(void)state;
	assert_string_equal(sender_class_provider("gmail.com", NULL), "gmail");
	assert_string_equal(sender_class_provider("GMail.COM.", ""), "gmail");
	assert_string_equal(sender_class_provider("googlemail.com", NULL), "gmail");
	assert_string_equal(sender_class_provider("customer.example", "ASPMX.L.GOOGLE.COM."), "gmail");
	assert_string_equal(sender_class_provider("notgmail.com", "mx.evilgoogle.com"), "");
	assert_string_equal(sender_class_provider("gmail.com.example", NULL), "");
	assert_string_equal(sender_class_provider("yahoo.com", NULL), "yahoo");
	assert_string_equal(sender_class_provider("yahoo.co.uk", "mta6.am0.yahoodns.net"), "yahoo");
	assert_string_equal(sender_class_provider("yahoo.co.jp", "mx1.mail.yahoo.co.jp"), "");
	assert_string_equal(sender_class_provider("live.jp", NULL), "outlook");
	assert_string_equal(sender_class_provider("contoso.example",
	    "contoso-example.mail.protection.outlook.com"), "outlook");
	assert_string_equal(sender_class_provider("mac.com", NULL), "icloud");
	assert_string_equal(sender_class_provider("docomo.ne.jp", NULL), "docomo");
	assert_string_equal(sender_class_provider("biz.ezweb.ne.jp", NULL), "au");
	assert_string_equal(sender_class_provider("au.com", NULL), "au");
	assert_string_equal(sender_class_provider("i.softbank.jp", NULL), "softbank");
	assert_string_equal(sender_class_provider("t.vodafone.ne.jp", NULL), "softbank");
	assert_string_equal(sender_class_provider(NULL, NULL), "");
	assert_string_equal(sender_class_provider("", ""), "");
	assert_string_equal(sender_class_provider(".", "."), "");
	/* The domain wins over the MX host. */
	assert_string_equal(sender_class_provider("docomo.ne.jp", "aspmx.l.google.com"), "docomo");
}

/* A phrase past the first 1 KiB is not seen; nothing overflows. */
static void
test_long_text(void **state)
{
	static char text[8192];
	struct sender_class out;
	size_t n;

	(void)state;
	n = (size_t)snprintf(text, sizeof(text), "421 4.7.0 ");
	while (n + 40 < sizeof(text) - 64)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "xxxxxxxxx\r\n421-4.7.0 ");
	snprintf(text + n, sizeof(text) - n, "too many connections");
	sender_class_reply(421, text, "example.net", NULL, &out);
	assert_string_equal(out.status, "4.7.0");
	assert_string_equal(sender_class_reason_name(out.reason), "policy");
	assert_false(out.throttled);

	/* One huge token. */
	memset(text, 'a', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	sender_class_reply(421, text, "example.net", NULL, &out);
	assert_string_equal(out.status, "4.0.0");
	assert_string_equal(sender_class_reason_name(out.reason), "other");
}

static void
test_names(void **state)
{
	(void)state;
	assert_string_equal(sender_class_reason_name(SENDER_REASON_NONE), "none");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_THROTTLE), "throttle");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_BLOCK), "block");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_MAILBOX), "mailbox");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_QUOTA), "quota");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_POLICY), "policy");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_DNS), "dns");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_NETWORK), "network");
	assert_string_equal(sender_class_reason_name(SENDER_REASON_OTHER), "other");
	assert_string_equal(sender_class_kind_name(SENDER_CLASS_DELIVERED), "delivered");
	assert_string_equal(sender_class_kind_name(SENDER_CLASS_DEFERRED), "deferred");
	assert_string_equal(sender_class_kind_name(SENDER_CLASS_BOUNCED), "bounced");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cases),
		cmocka_unit_test(test_status_given),
		cmocka_unit_test(test_provider),
		cmocka_unit_test(test_long_text),
		cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
