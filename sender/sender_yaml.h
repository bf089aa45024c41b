/*
 * sender_yaml - reading the sender's YAML data files (the shaping rules of
 * sender_shaping, the warm-up schedule of sender_warmup) with libyaml's
 * document API, as common/hk_config.c reads the cluster file: every error
 * names the file, the line and the key ("FILE:LINE: key 'KEY': what").
 *
 * A document is loaded from a file or from memory (the built-in copies of
 * the files of deploy/). The getters take a node and the key it was found under
 * (for the message), and return 0 or -1 with the message in the buffer the
 * document was loaded with. Nothing here keeps state beyond one document.
 */
#ifndef SENDER_YAML_H
#define SENDER_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yaml.h>

struct sender_yaml {
	/* read-only */
	const char *name;               /* the file name errors give */
	/* private */
	yaml_document_t doc;
	bool loaded;
	char *err;
	size_t errlen;
};

/* sender_yaml_load_file - parse PATH into Y. -1 with "PATH: ..." in ERR if it
 * cannot be read or is not YAML. Y keeps ERR for later errors; free Y with
 * sender_yaml_free() either way. */
int sender_yaml_load_file(struct sender_yaml *y, const char *path, char *err, size_t errlen);

/* sender_yaml_load_text - the same from TEXT (LEN octets); NAME stands for
 * the file in errors. */
int sender_yaml_load_text(struct sender_yaml *y, const char *name, const char *text, size_t len,
    char *err, size_t errlen);

void sender_yaml_free(struct sender_yaml *y);

/* sender_yaml_root - the root node, or NULL for an empty document. */
yaml_node_t *sender_yaml_root(struct sender_yaml *y);

/* sender_yaml_error - format "NAME:LINE: key 'KEY': ..." into the error
 * buffer (LINE from node N; 0 without one). Always returns -1. */
int sender_yaml_error(struct sender_yaml *y, const yaml_node_t *n, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* sender_yaml_scalar - a scalar node's text, else NULL. */
const char *sender_yaml_scalar(const yaml_node_t *n);

/* sender_yaml_is_null - a scalar "~", "null" or empty (plain, not quoted). */
bool sender_yaml_is_null(const yaml_node_t *n);

/* Mapping access: the number of pairs, the Ith key and value nodes. N must
 * be a mapping. */
size_t sender_yaml_map_len(const yaml_node_t *n);
yaml_node_t *sender_yaml_map_key(struct sender_yaml *y, const yaml_node_t *n, size_t i);
yaml_node_t *sender_yaml_map_value(struct sender_yaml *y, const yaml_node_t *n, size_t i);

/* sender_yaml_check_keys - every key of the mapping MAP is in ALLOWED
 * (NULL-terminated); else an error naming the first unknown key and WHAT. */
int sender_yaml_check_keys(struct sender_yaml *y, const yaml_node_t *map, const char *what,
    const char *const *allowed);

/* Values. Each checks the node's type and range and reports through
 * sender_yaml_error() under KEY. */
int sender_yaml_bool(struct sender_yaml *y, const yaml_node_t *n, const char *key, bool *out);
/* An integer 0..MAX. */
int sender_yaml_uint(struct sender_yaml *y, const yaml_node_t *n, const char *key, uint64_t max, uint64_t *out);
/* "500ms", "10s", "5m", "1h", "5d" (a bare number is seconds), up to 365d. */
int sender_yaml_duration_ms(struct sender_yaml *y, const yaml_node_t *n, const char *key, int64_t *out);
/* A fraction MIN..MAX: "0.03", or a percentage "3%" (= 0.03). */
int sender_yaml_fraction(struct sender_yaml *y, const yaml_node_t *n, const char *key, double min, double max,
    double *out);
/* A number MIN..MAX (a decimal, no percent sign). */
int sender_yaml_number(struct sender_yaml *y, const yaml_node_t *n, const char *key, double min, double max,
    double *out);

#endif
