/*
 * router_domains - bounded LRU set of domains (see router_domains.h):
 * a chained hash table plus a doubly linked list in order of use.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hk_util.h"
#include "router_domains.h"

struct dnode {
	struct dnode *hnext;        /* bucket chain */
	struct dnode *prev, *next;  /* use order: head is the most recent */
	size_t len;
	char name[];
};

struct router_domains {
	struct dnode **buckets;
	size_t mask;
	struct dnode *head, *tail;
	size_t n, cap, bytes;
};

static uint64_t
hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

router_domains *
router_domains_new(size_t cap)
{
	router_domains *d = xcalloc(1, sizeof(*d));
	size_t nb = 16;

	while (nb < cap)
		nb <<= 1;
	d->buckets = xcalloc(nb, sizeof(*d->buckets));
	d->mask = nb - 1;
	d->cap = cap ? cap : 1;
	return d;
}

void
router_domains_free(router_domains **dp)
{
	router_domains *d = *dp;

	if (d == NULL)
		return;
	for (struct dnode *x = d->head, *next; x; x = next) {
		next = x->next;
		free(x);
	}
	free(d->buckets);
	free(d);
	*dp = NULL;
}

static struct dnode *
find(const router_domains *d, const char *domain, struct dnode ***link)
{
	struct dnode **l = &d->buckets[hash(domain) & d->mask];

	for (; *l; l = &(*l)->hnext)
		if (!strcmp((*l)->name, domain))
			break;
	if (link)
		*link = l;
	return *l;
}

static void
unlink_use(router_domains *d, struct dnode *x)
{
	if (x->prev)
		x->prev->next = x->next;
	else
		d->head = x->next;
	if (x->next)
		x->next->prev = x->prev;
	else
		d->tail = x->prev;
	x->prev = x->next = NULL;
}

static void
push_front(router_domains *d, struct dnode *x)
{
	x->next = d->head;
	x->prev = NULL;
	if (d->head)
		d->head->prev = x;
	d->head = x;
	if (d->tail == NULL)
		d->tail = x;
}

void
router_domains_touch(router_domains *d, const char *domain)
{
	struct dnode **link, *x = find(d, domain, &link);
	size_t len;

	if (x) {
		if (x != d->head) {
			unlink_use(d, x);
			push_front(d, x);
		}
		return;
	}
	if (d->n == d->cap) {
		struct dnode *old = d->tail, **ol;
		find(d, old->name, &ol);
		*ol = old->hnext;
		unlink_use(d, old);
		d->bytes -= old->len + 1;
		d->n--;
		free(old);
		find(d, domain, &link); /* the chain may have changed */
	}
	len = strlen(domain);
	x = xmalloc(sizeof(*x) + len + 1);
	memcpy(x->name, domain, len + 1);
	x->len = len;
	x->hnext = NULL;
	*link = x;
	push_front(d, x);
	d->bytes += len + 1;
	d->n++;
}

size_t
router_domains_count(const router_domains *d)
{
	return d->n;
}

int
router_domains_has(const router_domains *d, const char *domain)
{
	return find(d, domain, NULL) != NULL;
}

char *
router_domains_copy(const router_domains *d, size_t *n)
{
	char *buf = xmalloc(d->bytes ? d->bytes : 1), *p = buf;

	for (const struct dnode *x = d->head; x; x = x->next) {
		memcpy(p, x->name, x->len + 1);
		p += x->len + 1;
	}
	*n = d->n;
	return buf;
}
