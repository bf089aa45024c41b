/*
 * ingress_param - the ESMTP parameters of MAIL and RCPT (SIZE, BODY,
 * SMTPUTF8, RET, ENVID, AUTH; NOTIFY, ORCPT) and the two encodings their
 * values use: xtext (RFC 3461 4) and utf-8-addr-xtext/unitext (RFC 6533 3).
 *
 * Pure functions, like the rest of ingress_parse: bytes in, decoded bytes or
 * an SMTP reply line out.
 */
#ifndef INGRESS_PARAM_H
#define INGRESS_PARAM_H

#include <stdbool.h>
#include <stddef.h>

#include "ingress_parse.h"

/*
 * ingress_xtext_decode - decode xtext in[0..len) into out, NUL-terminated.
 * "+XX" is one octet (hex digits of either case, as Postfix accepts); any
 * other character must be an xchar ('!'..'~' but '+' and '='). Decoding never
 * lengthens, so out_size >= len + 1 always suffices. Returns 0 with the length
 * in *out_len (the octets may include NUL), or -1 if the text is malformed or
 * does not fit.
 */
int ingress_xtext_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len);

/*
 * ingress_unitext_decode - decode RFC 6533 utf-8-addr-xtext in[0..len) (QCHAR
 * and "\x{HEX}" escapes) into UTF-8 in out, NUL-terminated; with raw_utf8
 * also utf-8-addr-unitext (UTF-8 characters as themselves, allowed only when
 * SMTPUTF8 is in use). An escape must name a Unicode scalar value (2 to 6 hex
 * digits, no surrogates) other than NUL. out_size >= len + 1 always suffices.
 * Returns 0 with the length in *out_len, or -1.
 */
int ingress_unitext_decode(const char *in, size_t len, bool raw_utf8, char *out, size_t out_size,
    size_t *out_len);

/*
 * ingress__params_parse - the " KEY[=VALUE]..." after a path's '>' (p points
 * at the blank or the NUL): checks each parameter, fills out->params[] and the
 * typed fields. 0, or -1 with the reply in err. For ingress_parse.c.
 */
int ingress__params_parse(const char *p, enum ingress_path_kind kind, unsigned flags,
    struct ingress_path *out, char err[INGRESS_REPLY_MAX]);

#endif
