/*
 * hk_u64map - linear probing with backward-shift deletion (no tombstones),
 * capacity a power of two, grown at 70% load.
 */
#include <stdlib.h>

#include "hk_u64map.h"
#include "hk_util.h"

struct slot {
	uint64_t key; /* 0 = empty */
	void *value;
};

struct hk_u64map {
	struct slot *slots;
	size_t cap, count;
};

static size_t
slot_of(uint64_t key, size_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

hk_u64map *
hk_u64map_new(void)
{
	hk_u64map *m = xcalloc(1, sizeof(*m));
	m->cap = 64;
	m->slots = xcalloc(m->cap, sizeof(struct slot));
	return m;
}

void
hk_u64map_destroy(hk_u64map **mp)
{
	if (*mp == NULL)
		return;
	free((*mp)->slots);
	free(*mp);
	*mp = NULL;
}

static void
grow(hk_u64map *m)
{
	struct slot *old = m->slots;
	size_t oldcap = m->cap;

	m->cap *= 2;
	m->slots = xcalloc(m->cap, sizeof(struct slot));
	for (size_t i = 0; i < oldcap; i++) {
		if (old[i].key == 0)
			continue;
		size_t j = slot_of(old[i].key, m->cap);
		while (m->slots[j].key != 0)
			j = (j + 1) & (m->cap - 1);
		m->slots[j] = old[i];
	}
	free(old);
}

void
hk_u64map_put(hk_u64map *m, uint64_t key, void *value)
{
	if ((m->count + 1) * 10 > m->cap * 7)
		grow(m);
	size_t i = slot_of(key, m->cap);
	while (m->slots[i].key != 0 && m->slots[i].key != key)
		i = (i + 1) & (m->cap - 1);
	if (m->slots[i].key == 0)
		m->count++;
	m->slots[i].key = key;
	m->slots[i].value = value;
}

void *
hk_u64map_get(const hk_u64map *m, uint64_t key)
{
	for (size_t i = slot_of(key, m->cap); m->slots[i].key != 0; i = (i + 1) & (m->cap - 1))
		if (m->slots[i].key == key)
			return m->slots[i].value;
	return NULL;
}

void *
hk_u64map_pop(hk_u64map *m, uint64_t key)
{
	size_t mask = m->cap - 1, i = slot_of(key, m->cap);

	while (m->slots[i].key != key) {
		if (m->slots[i].key == 0)
			return NULL;
		i = (i + 1) & mask;
	}
	void *value = m->slots[i].value;
	/* Shift later members of the probe run back into the hole. */
	for (size_t j = (i + 1) & mask; m->slots[j].key != 0; j = (j + 1) & mask) {
		size_t home = slot_of(m->slots[j].key, m->cap);
		/* Move j to i if its home is not within (i, j] cyclically. */
		if (((j - home) & mask) >= ((j - i) & mask)) {
			m->slots[i] = m->slots[j];
			i = j;
		}
	}
	m->slots[i].key = 0;
	m->slots[i].value = NULL;
	m->count--;
	return value;
}

size_t
hk_u64map_count(const hk_u64map *m)
{
	return m->count;
}
