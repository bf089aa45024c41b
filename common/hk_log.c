/*
 * hk_log - JSON-lines logging on stdout, one write(2) per line.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "hk_log.h"

static _Thread_local char log_node[128];
static enum hk_log_level log_min = HK_LOG_INFO;

static const char *const level_names[] = {
	[HK_LOG_DEBUG] = "debug", [HK_LOG_INFO] = "info",
	[HK_LOG_WARN] = "warn", [HK_LOG_ERROR] = "error",
};

void
hk_log_set_node(const char *name)
{
	snprintf(log_node, sizeof(log_node), "%s", name ? name : "");
}

void
hk_log_set_level(enum hk_log_level min)
{
	log_min = min;
}

static void
log_write(enum hk_log_level level, const char *event, const char *fmt, va_list ap)
{
	json_t *obj = NULL;
	json_error_t jerr;
	struct timespec ts;
	struct tm tm;
	char stamp[96];
	char *line;
	size_t len;

	if (fmt != NULL) {
		obj = json_vpack_ex(&jerr, 0, fmt, ap);
		if (obj == NULL || !json_is_object(obj)) {
			/* A bad format is our bug; still log the event itself. */
			json_decref(obj);
			obj = json_pack("{s:s}", "log_error", jerr.text);
		}
	} else {
		obj = json_object();
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	    tm.tm_sec, ts.tv_nsec / 1000000);

	/* Fixed keys first, so a human reading the stream sees them first. */
	json_t *out = json_pack("{s:s, s:s, s:s, s:s}", "ts", stamp,
	    "level", level_names[level], "node", log_node, "event", event);
	json_object_update_missing(out, obj);
	json_decref(obj);
	line = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(out);
	if (line == NULL)
		return;
	len = strlen(line);
	line[len] = '\n'; /* the NUL's byte becomes the newline: one write per line */
	ssize_t off = 0, n;
	while ((size_t)off < len + 1 && (n = write(STDOUT_FILENO, line + off, len + 1 - (size_t)off)) > 0)
		off += n;
	free(line);
}

void
hk_log(enum hk_log_level level, const char *event, const char *fmt, ...)
{
	va_list ap;

	if (level < log_min)
		return;
	va_start(ap, fmt);
	log_write(level, event, fmt, ap);
	va_end(ap);
}

void
hk_fatal(const char *event, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write(HK_LOG_ERROR, event, fmt, ap);
	va_end(ap);
	exit(1);
}
