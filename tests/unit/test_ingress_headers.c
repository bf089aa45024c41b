/*
 * test_ingress_headers - the header block scan and the From: domain.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ingress_headers.h"

static void
scan(const char *msg, struct ingress_headers *h)
{
	ingress_headers_scan(msg, strlen(msg), h);
}

/* The From: domain of a one-field message, both with CRLF and with LF. */
static void
from_is(const char *field, const char *domain, unsigned mailboxes)
{
	struct ingress_headers h;
	char msg[2048], lf[2048];
	size_t n = 0;

	snprintf(msg, sizeof(msg), "%s\r\nSubject: t\r\n\r\nbody\r\n", field);
	scan(msg, &h);
	if (strcmp(h.from_domain, domain) != 0 || h.from_mailboxes != mailboxes)
		fail_msg("'%s': domain '%s' (%u mailboxes), expected '%s' (%u)", field, h.from_domain,
		    h.from_mailboxes, domain, mailboxes);
	assert_int_equal(h.from_fields, 1);
	assert_false(h.malformed);
	for (const char *p = msg; *p; p++) {
		if (*p != '\r' || p[1] != '\n')
			lf[n++] = *p;
	}
	lf[n] = '\0';
	scan(lf, &h);
	if (strcmp(h.from_domain, domain) != 0 || h.from_mailboxes != mailboxes)
		fail_msg("'%s' (LF): domain '%s', expected '%s'", field, h.from_domain, domain);
}

static void
test_realistic(void **state)
{
	const char *msg =
	    "Received: from mx.example.net (mx.example.net [192.0.2.5])\r\n"
	    "\tby relay.example.com (Hikyaku) with ESMTP id 01J0000000000000000000000;\r\n"
	    "\tTue, 1 Dec 2026 10:00:00 +0000\r\n"
	    "From: \"Yamada, Taro\" (Sales\r\n"
	    " dept.) <taro.yamada@Example.CO.JP>\r\n"
	    "To: bob@example.org\r\n"
	    "Subject: =?UTF-8?B?44GT44KT44Gr44Gh44Gv?=\r\n"
	    "Date: Tue, 1 Dec 2026 19:00:00 +0900\r\n"
	    "Message-ID: <20261201190000.abc@example.co.jp>\r\n"
	    "MIME-Version: 1.0\r\n"
	    "\r\n"
	    "Hello\r\n"
	    "From me, a line that is not a header\r\n";
	struct ingress_headers h;

	(void)state;
	scan(msg, &h);
	assert_string_equal(h.from_domain, "example.co.jp");
	assert_int_equal(h.from_mailboxes, 1);
	assert_int_equal(h.from_fields, 1);
	assert_true(h.has_date);
	assert_true(h.has_message_id);
	assert_true(h.has_body);
	assert_false(h.malformed);
	assert_int_equal(h.len, strstr(msg, "Hello") - msg);
	assert_int_equal(h.max_line_len, strlen("\tby relay.example.com (Hikyaku) with ESMTP id 01J0000000000000000000000;"));
}

static void
test_missing_and_line_endings(void **state)
{
	struct ingress_headers h;
	const char *lf = "from: a@b.example\nSubject: x\n\nbody\n";
	const char *crlf = "from: a@b.example\r\nSubject: x\r\n\r\nbody\r\n";
	const char *mixed = "from: a@b.example\r\nSubject: x\n\r\nbody\r\n";

	(void)state;
	scan(lf, &h);
	assert_false(h.has_date);
	assert_false(h.has_message_id);
	assert_string_equal(h.from_domain, "b.example");
	assert_true(h.has_body);
	assert_int_equal(h.len, strlen("from: a@b.example\nSubject: x\n\n"));
	assert_int_equal(h.max_line_len, strlen("from: a@b.example"));
	scan(crlf, &h);
	assert_string_equal(h.from_domain, "b.example");
	assert_int_equal(h.len, strlen("from: a@b.example\r\nSubject: x\r\n\r\n"));
	assert_int_equal(h.max_line_len, strlen("from: a@b.example"));
	scan(mixed, &h);
	assert_int_equal(h.len, strlen("from: a@b.example\r\nSubject: x\n\r\n"));

	/* Present but empty still counts: adding another would make two. */
	scan("Date:\r\nMessage-Id:  \r\n\r\n", &h);
	assert_true(h.has_date);
	assert_true(h.has_message_id);
	assert_int_equal(h.from_fields, 0);
	assert_string_equal(h.from_domain, "");

	/* No empty line: it is all header. */
	scan("Subject: x\r\nFrom: a@b.example", &h);
	assert_false(h.has_body);
	assert_int_equal(h.len, strlen("Subject: x\r\nFrom: a@b.example"));
	assert_string_equal(h.from_domain, "b.example");
	/* Nothing at all, or no header at all. */
	ingress_headers_scan("", 0, &h);
	assert_int_equal(h.len, 0);
	assert_false(h.has_body);
	scan("\r\nbody\r\n", &h);
	assert_int_equal(h.len, 2);
	assert_true(h.has_body);
	assert_false(h.malformed);
}

static void
test_from_forms(void **state)
{
	(void)state;
	from_is("From: joe@example.com", "example.com", 1);
	from_is("From: <joe@example.com>", "example.com", 1);
	from_is("From: Joe Q. Public <john.q.public@example.com>", "example.com", 1);
	from_is("From: joe@example.com (Joe Smith)", "example.com", 1);
	from_is("From: \"Joe \\\"Q\\\" Smith\" <joe@example.com>", "example.com", 1);
	from_is("From: (a (nested) comment <x@evil.example>) joe@example.com", "example.com", 1);
	from_is("From: \"john doe\"@example.com", "example.com", 1);
	from_is("From: =?UTF-8?B?5bGx55Sw5aSq6YOO?= <taro@example.jp>", "example.jp", 1);
	from_is("From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@VM1.ULG.AC.BE>", "vm1.ulg.ac.be", 1);
	from_is("From: \"=?UTF-8?Q?J=C3=B6rg?=\" <j@example.de>", "example.de", 1);
	from_is("From: J\xc3\xb6rg <j@example.de>", "example.de", 1);          /* raw 8-bit name */
	from_is("From: a@b\xc3\xbc" "cher.example", "xn--bcher-kva.example", 1); /* IDN: A-label */
	from_is("From:joe@example.com", "example.com", 1);
	from_is("From : joe@example.com", "example.com", 1);                   /* obs: blank before ':' */
	from_is("From: Joe\r\n <joe@example.com>", "example.com", 1);            /* folded */
	from_is("From:\r\n\tJoe\r\n\t<joe@\r\n example.com>", "example.com", 1); /* folded anywhere */
	from_is("From: joe @ example . com", "example.com", 1);                  /* obs CFWS */
	from_is("From: Joe <@route.example,@b.example:joe@example.com>", "example.com", 1);
	from_is("From: a@one.example, Bee <b@two.example>", "one.example", 2);
	from_is("From: , a@one.example,", "one.example", 1);                     /* obs empty elements */
	from_is("From: a@example.com.", "example.com", 1);
	/* Parses, but no domain name to give. */
	from_is("From: a@[192.0.2.1]", "", 1);
	from_is("From: a@exa_mple.com", "", 1);
}

static void
test_from_unparsable(void **state)
{
	(void)state;
	/* Anything a reader could take two ways gives no domain. */
	from_is("From: Smith, John <js@example.com>", "", 0);
	from_is("From: joe@good.example <joe@evil.example>", "", 0);
	from_is("From: \"Joe\" <joe@good.example> <joe@evil.example>", "", 0);
	from_is("From: <joe@good.example> x", "", 0);
	from_is("From: Joe Smith@example.com", "", 0);
	from_is("From: undisclosed-recipients:;", "", 0);
	from_is("From: Team: a@b.example;", "", 0);
	from_is("From: <>", "", 0);
	from_is("From: joe", "", 0);
	from_is("From: @example.com", "", 0);
	from_is("From: joe@", "", 0);
	from_is("From:", "", 0);
	from_is("From: (unterminated comment joe@example.com", "", 0);
	from_is("From: \"unterminated quote <joe@example.com>", "", 0);
	from_is("From: <joe@example.com", "", 0);
	from_is("From: joe@example.com>", "", 0);
	from_is("From: joe@[192.0.2.1", "", 0);
	from_is("From: joe@example.com\\", "", 0);
	from_is("From: a@b.example, Smith, John <c@d.example>", "", 0);
}

static void
test_from_several(void **state)
{
	struct ingress_headers h;

	(void)state;
	scan("From: a@first.example\r\nFrom: b@second.example\r\n\r\n", &h);
	assert_int_equal(h.from_fields, 2); /* for the caller to refuse */
	assert_string_equal(h.from_domain, "first.example");
	/* A continuation belongs to its own field only. */
	scan("From: a@first.example\r\nX-Note: x\r\n b@second.example\r\n\r\n", &h);
	assert_string_equal(h.from_domain, "first.example");
	assert_int_equal(h.from_mailboxes, 1);
	/* Headers after the empty line are body. */
	scan("Subject: x\r\n\r\nFrom: a@b.example\r\nDate: x\r\n", &h);
	assert_int_equal(h.from_fields, 0);
	assert_false(h.has_date);
}

static void
test_malformed(void **state)
{
	struct ingress_headers h;
	char longline[1300];

	(void)state;
	scan("From someone@example.com Tue Dec  1 10:00:00 2026\r\nSubject: x\r\n\r\n", &h);
	assert_true(h.malformed);                  /* an mbox From_ line */
	scan(" Subject: x\r\n\r\n", &h);
	assert_true(h.malformed);                  /* continues nothing */
	scan("Subject: x\r\nno colon here\r\n\r\n", &h);
	assert_true(h.malformed);
	scan(": no name\r\n\r\n", &h);
	assert_true(h.malformed);
	scan("Sub ject: x\r\n\r\n", &h);
	assert_true(h.malformed);
	scan("Subject: x\r\n continued\r\n\tagain\r\nX-Empty:\r\n\r\nno colon in the body\r\n", &h);
	assert_false(h.malformed);

	/* The longest header line; body lines do not count. */
	memset(longline, 'a', sizeof(longline));
	memcpy(longline, "X-Long: ", 8);
	strcpy(longline + 1200, "\r\n\r\n");
	scan(longline, &h);
	assert_int_equal(h.max_line_len, 1200);
	memcpy(longline, "Subject: x\r\n\r\n", 14);
	scan(longline, &h);
	assert_int_equal(h.max_line_len, 10);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_realistic),
		cmocka_unit_test(test_missing_and_line_endings),
		cmocka_unit_test(test_from_forms),
		cmocka_unit_test(test_from_unparsable),
		cmocka_unit_test(test_from_several),
		cmocka_unit_test(test_malformed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
