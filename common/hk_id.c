/*
 * hk_id - ULID message ids: 48-bit Unix milliseconds + 80 random bits,
 * Crockford base32. Monotonic per generator: within one millisecond the
 * random part is incremented, so ids sort in creation order.
 */
#include <stdlib.h>
#include <string.h>

#include "hk_id.h"
#include "hk_util.h"

struct hk_idgen {
	int64_t last_ms;
	uint8_t rnd[10];
};

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

hk_idgen *
hk_idgen_new(void)
{
	hk_idgen *g = xcalloc(1, sizeof(*g));
	if (hk_random(g->rnd, sizeof(g->rnd)) != 0) {
		free(g);
		return NULL;
	}
	return g;
}

void
hk_idgen_destroy(hk_idgen **gen)
{
	free(*gen);
	*gen = NULL;
}

void
hk_id_next(hk_idgen *g, char out[HK_ID_LEN + 1])
{
	int64_t now = hk_now_ms();
	uint8_t raw[16];

	if (now > g->last_ms) {
		g->last_ms = now;
		if (hk_random(g->rnd, sizeof(g->rnd)) != 0)
			g->rnd[9]++; /* fall back to counting; uniqueness still holds */
		g->rnd[0] &= 0x7f; /* leave headroom so increments rarely carry out */
	} else {
		/* Same (or earlier: clock stepped back) millisecond: count up. */
		for (int i = 9; i >= 0 && ++g->rnd[i] == 0; i--)
			;
	}
	for (int i = 0; i < 6; i++)
		raw[i] = (uint8_t)(g->last_ms >> (40 - 8 * i));
	memcpy(raw + 6, g->rnd, 10);

	/* 128 bits -> 26 base32 digits, most significant first (2 pad bits). */
	for (int i = 0; i < HK_ID_LEN; i++) {
		int bit = i * 5 - 2; /* position of this digit's top bit */
		unsigned v = 0;
		for (int b = 0; b < 5; b++) {
			int pos = bit + b;
			if (pos >= 0 && (raw[pos / 8] >> (7 - pos % 8)) & 1)
				v |= 1u << (4 - b);
		}
		out[i] = b32[v];
	}
	out[HK_ID_LEN] = '\0';
}

int64_t
hk_id_time_ms(const char *id)
{
	int64_t t = 0;

	if (strlen(id) != HK_ID_LEN)
		return -1;
	/* The first 10 digits carry 50 bits: 2 pad bits and the 48-bit time. */
	for (int i = 0; i < 10; i++) {
		const char *p = strchr(b32, id[i]);
		if (p == NULL || id[i] == '\0')
			return -1;
		t = (t << 5) | (p - b32);
	}
	return t;
}
