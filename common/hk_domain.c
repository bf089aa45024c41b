/*
 * hk_domain - canonical destination domains: lower-case ASCII, IDNA A-labels
 * (libidn2, IDNA2008 with transitional fallback off), no trailing dot.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <idn2.h>

#include "hk_domain.h"

static int
ascii_domain_ok(const char *d)
{
	size_t label = 0, len = strlen(d);

	if (len == 0 || len > 253)
		return 0;
	for (const char *p = d; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '.') {
			if (label == 0 || p[-1] == '-')
				return 0;
			label = 0;
			continue;
		}
		if (!(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') && c != '-')
			return 0;
		if (label == 0 && c == '-')
			return 0;
		if (++label > 63)
			return 0;
	}
	return label > 0 && d[len - 1] != '-';
}

int
hk_domain_canon(const char *domain, char out[HK_DOMAIN_MAX])
{
	size_t len = strlen(domain);
	int ascii = 1;
	char tmp[HK_DOMAIN_MAX];

	if (len == 0 || len >= HK_DOMAIN_MAX)
		return -1;
	memcpy(tmp, domain, len + 1);
	if (tmp[len - 1] == '.')
		tmp[--len] = '\0';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)tmp[i];
		if (c >= 0x80)
			ascii = 0;
		else if (c >= 'A' && c <= 'Z')
			tmp[i] = (char)(c - 'A' + 'a');
	}
	if (ascii) {
		if (!ascii_domain_ok(tmp))
			return -1;
		memcpy(out, tmp, len + 1);
		return 0;
	}
	char *alabel = NULL;
	if (idn2_to_ascii_8z(tmp, &alabel, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL) != IDN2_OK)
		return -1;
	int rc = -1;
	if (strlen(alabel) < HK_DOMAIN_MAX && ascii_domain_ok(alabel)) {
		strcpy(out, alabel);
		rc = 0;
	}
	idn2_free(alabel);
	return rc;
}

int
hk_domain_of(const char *address, char out[HK_DOMAIN_MAX])
{
	const char *at = strrchr(address, '@');

	if (at == NULL || at == address)
		return -1;
	return hk_domain_canon(at + 1, out);
}
