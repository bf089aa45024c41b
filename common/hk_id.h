/*
 * hk_id - cluster-unique, sortable message ids (ULID: 48-bit millisecond time
 * and 80 random bits, Crockford base32, 26 characters). Within one generator
 * ids are strictly increasing even inside one millisecond.
 */
#ifndef HK_ID_H
#define HK_ID_H

#include <stdint.h>

#define HK_ID_LEN 26

typedef struct hk_idgen hk_idgen;

/* hk_idgen_new - a generator seeded from the OS random source; NULL on failure. */
hk_idgen *hk_idgen_new(void);
void hk_idgen_destroy(hk_idgen **gen);

/* hk_id_next - write the next id and a NUL into out (HK_ID_LEN + 1 bytes). */
void hk_id_next(hk_idgen *gen, char out[HK_ID_LEN + 1]);

/* hk_id_time_ms - the millisecond timestamp in an id, or -1 if malformed. */
int64_t hk_id_time_ms(const char *id);

#endif
