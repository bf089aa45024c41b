/*
 * sender_yaml - YAML data files of the sender: loading and typed getters
 * whose errors name file, line and key (see sender_yaml.h).
 */
/* System */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <yaml.h>

/* This role */
#include "sender_yaml.h"

static int
load(struct sender_yaml *y, yaml_parser_t *parser)
{
	if (!yaml_parser_load(parser, &y->doc)) {
		snprintf(y->err, y->errlen, "%s:%lu: YAML syntax error: %s %s", y->name,
		    (unsigned long)parser->problem_mark.line + 1,
		    parser->problem ? parser->problem : "", parser->context ? parser->context : "");
		return -1;
	}
	y->loaded = true;
	return 0;
}

int
sender_yaml_load_file(struct sender_yaml *y, const char *path, char *err, size_t errlen)
{
	yaml_parser_t parser;
	FILE *f;
	int rc;

	memset(y, 0, sizeof(*y));
	y->name = path;
	y->err = err;
	y->errlen = errlen;
	if ((f = fopen(path, "rb")) == NULL) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	rc = load(y, &parser);
	yaml_parser_delete(&parser);
	fclose(f);
	return rc;
}

int
sender_yaml_load_text(struct sender_yaml *y, const char *name, const char *text, size_t len,
    char *err, size_t errlen)
{
	yaml_parser_t parser;
	int rc;

	memset(y, 0, sizeof(*y));
	y->name = name;
	y->err = err;
	y->errlen = errlen;
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	rc = load(y, &parser);
	yaml_parser_delete(&parser);
	return rc;
}

void
sender_yaml_free(struct sender_yaml *y)
{
	if (y->loaded)
		yaml_document_delete(&y->doc);
	y->loaded = false;
}

yaml_node_t *
sender_yaml_root(struct sender_yaml *y)
{
	return y->loaded ? yaml_document_get_root_node(&y->doc) : NULL;
}

int
sender_yaml_error(struct sender_yaml *y, const yaml_node_t *n, const char *key, const char *fmt, ...)
{
	char what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(y->err, y->errlen, "%s:%lu: key '%s': %s", y->name,
	    n ? (unsigned long)n->start_mark.line + 1 : 0UL, key, what);
	return -1;
}

const char *
sender_yaml_scalar(const yaml_node_t *n)
{
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

bool
sender_yaml_is_null(const yaml_node_t *n)
{
	const char *s = sender_yaml_scalar(n);

	return s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	    (*s == '\0' || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"));
}

size_t
sender_yaml_map_len(const yaml_node_t *n)
{
	return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

yaml_node_t *
sender_yaml_map_key(struct sender_yaml *y, const yaml_node_t *n, size_t i)
{
	return yaml_document_get_node(&y->doc, n->data.mapping.pairs.start[i].key);
}

yaml_node_t *
sender_yaml_map_value(struct sender_yaml *y, const yaml_node_t *n, size_t i)
{
	return yaml_document_get_node(&y->doc, n->data.mapping.pairs.start[i].value);
}

int
sender_yaml_check_keys(struct sender_yaml *y, const yaml_node_t *map, const char *what,
    const char *const *allowed)
{
	for (size_t p = 0; p < sender_yaml_map_len(map); p++) {
		const yaml_node_t *kn = sender_yaml_map_key(y, map, p);
		const char *k = sender_yaml_scalar(kn);
		size_t i;

		for (i = 0; k && allowed[i]; i++)
			if (!strcmp(k, allowed[i]))
				break;
		if (k == NULL || allowed[i] == NULL)
			return sender_yaml_error(y, kn, k ? k : "?", "unknown key in %s", what);
		/* A key given twice would let the later silently win. */
		for (size_t q = 0; q < p; q++) {
			const char *o = sender_yaml_scalar(sender_yaml_map_key(y, map, q));
			if (o && !strcmp(o, k))
				return sender_yaml_error(y, kn, k, "given twice in %s", what);
		}
	}
	return 0;
}

int
sender_yaml_bool(struct sender_yaml *y, const yaml_node_t *n, const char *key, bool *out)
{
	const char *s = sender_yaml_scalar(n);

	if (s && (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")))
		*out = true;
	else if (s && (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")))
		*out = false;
	else
		return sender_yaml_error(y, n, key, "expected true or false");
	return 0;
}

int
sender_yaml_uint(struct sender_yaml *y, const yaml_node_t *n, const char *key, uint64_t max, uint64_t *out)
{
	const char *s = sender_yaml_scalar(n);
	char *end;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9')
		return sender_yaml_error(y, n, key, "expected a non-negative integer");
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return sender_yaml_error(y, n, key, "expected an integer up to %llu, got '%s'",
		    (unsigned long long)max, s);
	*out = v;
	return 0;
}

int
sender_yaml_duration_ms(struct sender_yaml *y, const yaml_node_t *n, const char *key, int64_t *out)
{
	static const struct { const char *unit; unsigned long long ms; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "", 1000 }, { "m", 60000 },
		{ "h", 3600000 }, { "d", 86400000 },
	};
	const unsigned long long max = 365ULL * 86400000;
	const char *s = sender_yaml_scalar(n);
	char *end;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9')
		return sender_yaml_error(y, n, key, "expected a duration like 500ms, 10s, 5m, 1h, 5d");
	errno = 0;
	v = strtoull(s, &end, 10);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].unit) == 0) {
			if (errno || v > max / units[i].ms)
				return sender_yaml_error(y, n, key, "duration '%s' is too long (max 365d)", s);
			*out = (int64_t)(v * units[i].ms);
			return 0;
		}
	}
	return sender_yaml_error(y, n, key, "unknown duration unit in '%s' (use ms, s, m, h or d)", s);
}

static int
number(const char *s, double *out, bool *percent)
{
	char *end;
	double v;

	*percent = false;
	if (s == NULL || !((*s >= '0' && *s <= '9') || *s == '.'))
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno || !isfinite(v))
		return -1;
	if (*end == '%') {
		*percent = true;
		end++;
	}
	if (*end != '\0')
		return -1;
	*out = *percent ? v / 100.0 : v;
	return 0;
}

int
sender_yaml_fraction(struct sender_yaml *y, const yaml_node_t *n, const char *key, double min, double max,
    double *out)
{
	const char *s = sender_yaml_scalar(n);
	bool percent;
	double v;

	if (number(s, &v, &percent) != 0)
		return sender_yaml_error(y, n, key, "expected a fraction like 0.03 or a percentage like 3%%");
	if (v < min || v > max)
		return sender_yaml_error(y, n, key, "'%s' is out of range (%g%% to %g%%)", s, min * 100, max * 100);
	*out = v;
	return 0;
}

int
sender_yaml_number(struct sender_yaml *y, const yaml_node_t *n, const char *key, double min, double max,
    double *out)
{
	const char *s = sender_yaml_scalar(n);
	bool percent;
	double v;

	if (number(s, &v, &percent) != 0 || percent)
		return sender_yaml_error(y, n, key, "expected a number");
	if (v < min || v > max)
		return sender_yaml_error(y, n, key, "'%s' is out of range (%g to %g)", s, min, max);
	*out = v;
	return 0;
}
