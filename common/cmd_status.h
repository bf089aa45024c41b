/*
 * cmd_status - `hikyaku shaping status` and `hikyaku warmup status
 * --config FILE [--node SENDER] [--json]`: ask every sender of the file (or
 * the one named) for its GET /shaping or /warmup and print, per source
 * address and destination provider, the limits and where they stand. Exit
 * 0, 1 if a sender could not be asked, 2 on usage errors.
 */
#ifndef CMD_STATUS_H
#define CMD_STATUS_H

int cmd_status_main(int argc, char **argv);

#endif
