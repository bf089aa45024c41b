/*
 * hk_log - JSON-lines logging on stdout.
 *
 * Each call writes one line: {"ts":...,"level":...,"node":...,"event":...,
 * <fields>}. Fields are given as a jansson pack format and its arguments
 * (https://jansson.readthedocs.io "Building Values"), e.g.
 *
 *     hk_log_info("delivered", "{s:s, s:s, s:i}", "id", id, "rcpt", rcpt, "code", 250);
 *
 * Pass NULL as the format for no fields. Lines are written with one write(2),
 * so threads never interleave. The node name is per thread (hk_log_set_node).
 */
#ifndef HK_LOG_H
#define HK_LOG_H

#include <jansson.h> /* json_int_t, for "I" fields */

enum hk_log_level { HK_LOG_DEBUG, HK_LOG_INFO, HK_LOG_WARN, HK_LOG_ERROR };

void hk_log(enum hk_log_level level, const char *event, const char *fmt, ...);
void hk_log_set_node(const char *name);     /* this thread's node name; copied */
void hk_log_set_level(enum hk_log_level min);

#define hk_log_debug(ev, ...) hk_log(HK_LOG_DEBUG, ev, __VA_ARGS__)
#define hk_log_info(ev, ...)  hk_log(HK_LOG_INFO, ev, __VA_ARGS__)
#define hk_log_warn(ev, ...)  hk_log(HK_LOG_WARN, ev, __VA_ARGS__)
#define hk_log_error(ev, ...) hk_log(HK_LOG_ERROR, ev, __VA_ARGS__)

/* hk_fatal - log an error and exit(1): only for an unusable environment at start-up. */
void hk_fatal(const char *event, const char *fmt, ...) __attribute__((noreturn));

#endif
