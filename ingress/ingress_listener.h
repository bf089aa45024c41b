/*
 * ingress_listener - the listening socket: accepts connections, enforces
 * max_sessions, and keeps the live sessions so that they can all be closed.
 */
#ifndef INGRESS_LISTENER_H
#define INGRESS_LISTENER_H

#include <stdint.h>

#include <uv.h>

#include "ingress_session.h"

typedef struct ingress_listener ingress_listener;

/*
 * ingress_listener_new - listen on LCONF's host:port and log
 * "ingress_listening"; sessions speak as LCONF's mode says (ENV and LCONF
 * outlive the listener). Returns 0 and *out, or a negative errno after
 * logging why (nothing is left open that needs the loop to run, except a
 * closing handle).
 */
int ingress_listener_new(ingress_listener **out, uv_loop_t *loop, const struct ingress_env *env,
    const struct hk_listener_conf *lconf);

/* ingress_listener_port - the port actually bound (listen_port 0 picks one). */
uint16_t ingress_listener_port(const ingress_listener *l);

/*
 * ingress_listener_close - stop accepting, say goodbye to and close every
 * session; DONE(arg) is called once the last handle is closed, after which
 * the listener is freed.
 */
void ingress_listener_close(ingress_listener *l, void (*done)(void *arg), void *arg);

#endif
