/*
 * hk_u64map - an open-addressing hash map from a non-zero uint64 key to a
 * pointer: the wait tables of asynchronous requests (request id -> waiter).
 */
#ifndef HK_U64MAP_H
#define HK_U64MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct hk_u64map hk_u64map;

hk_u64map *hk_u64map_new(void);
void hk_u64map_destroy(hk_u64map **map);       /* values are not freed */
void hk_u64map_put(hk_u64map *map, uint64_t key, void *value); /* key != 0; replaces */
void *hk_u64map_get(const hk_u64map *map, uint64_t key);       /* NULL if absent */
void *hk_u64map_pop(hk_u64map *map, uint64_t key);             /* remove; NULL if absent */
size_t hk_u64map_count(const hk_u64map *map);

#endif
