/* Client-side fixes for Debian's ndmjob (amanda-common 3.5.1, x86-64), preloaded by our tests
 * in addition to ../shared/tools/ndmjob's shim. Each one repairs a bug in ndmjob's test code
 * that makes a phase fail against ANY tape server; none of them changes what is checked.
 *
 * g_malloc: g_malloc(0) returns NULL, so ndmjob cannot send a zero-length TAPE_WRITE (the same
 *   fix as ../shared/tools/ndmjob's shim, so the tests also run where that wrapper is absent).
 *
 * ndmca_test_fill_data: the record pattern is built from a struct {u_short fileno; u_short
 *   sequence; u_long recno;} whose 4 padding bytes are never initialised, so T-WRITE writes
 *   stack garbage that T-READ/T-MTIO later regenerate differently and "fail compare".
 *   This version writes the same fields with the padding zeroed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void *g_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

void ndmca_test_fill_data(char *buf, int bufsize, int recno, int fileno)
{
    struct { uint16_t fileno; uint16_t sequence; uint32_t pad; uint64_t recno; } x;
    uint16_t sequence = 0;
    int i = 0;
    memset(&x, 0, sizeof x);
    x.fileno = (uint16_t)fileno;
    x.recno = (uint64_t)(long)recno;
    while (i < bufsize) {
        int n = bufsize - i < (int)sizeof x ? bufsize - i : (int)sizeof x;
        x.sequence = sequence++;
        memcpy(buf + i, &x, n);
        i += n;
    }
}

/* ndmca_tt_basic_write_and_read (phase T-BWR): its final compare reads the tape data through a
 *   plain (signed) char pointer and compares it with ((i - 4) & 0xff), so every byte >= 0x80
 *   "differs" and the phase fails at step #23 against any server. This is the same phase,
 *   step for step (as listed in dma-interop.md §1.4), with an unsigned compare. The protocol
 *   version (ndmjob keeps it in a private struct) comes from NDMJOB_FIX_TAPE_VERSION.
 */
#include <stdlib.h>

struct ndm_session;
enum { E_NO_ERR = 0, E_EOF = 12, E_EOM = 13 };
enum { M_FSF = 0, M_BSF = 1, M_FSR = 2, M_BSR = 3, M_REW = 4, M_EOF = 5 };
enum { MODE_RDWR = 1 };

extern void ndmca_test_phase(struct ndm_session *, char *, char *);
extern void ndmca_test_fail(struct ndm_session *, char *);
extern int ndmca_test_tape_open(struct ndm_session *, int, char *, int);
extern int ndmca_test_tape_close(struct ndm_session *, int);
extern int ndmca_test_tape_mtio(struct ndm_session *, int, int, unsigned long, unsigned long *);
extern int ndmca_check_tape_mtio(struct ndm_session *, int, int, unsigned long, unsigned long);
extern int ndmca_test_tape_write(struct ndm_session *, int, char *, unsigned);
extern int ndmca_test_tape_read(struct ndm_session *, int, char *, unsigned);
extern int ndmca_test_tape_read_2cnt(struct ndm_session *, int, char *, unsigned, unsigned);
extern int ndmca_tape_mtio(struct ndm_session *, int, unsigned long, unsigned long *);

#define STEP(call) do { int rc_ = (call); if (rc_) return rc_; } while (0)

int ndmca_tt_basic_write_and_read(struct ndm_session *sess)
{
    static char buf[64 * 1024];
    const char *v = getenv("NDMJOB_FIX_TAPE_VERSION");
    int v4 = v == NULL || atoi(v) >= 4;
    int end_err = v4 ? E_EOM : E_EOF;

    ndmca_test_phase(sess, "T-BWR", "Tape Write and Read Basics");
    /* EOF and EOM: rewind, one filemark, space around it */
    STEP(ndmca_test_tape_open(sess, E_NO_ERR, 0, MODE_RDWR));
    STEP(ndmca_test_tape_mtio(sess, E_NO_ERR, M_REW, 1, 0));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_BSR, 100, 100));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_BSF, 100, 100));
    STEP(ndmca_test_tape_mtio(sess, E_NO_ERR, M_EOF, 1, 0));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_BSF, 100, 99));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_FSF, 100, 99));
    STEP(ndmca_test_tape_read(sess, end_err, buf, sizeof buf));
    STEP(ndmca_test_tape_read(sess, end_err, buf, 1024));
    /* one record, no filemark */
    STEP(ndmca_test_tape_mtio(sess, E_NO_ERR, M_REW, 1, 0));
    STEP(ndmca_test_tape_write(sess, E_NO_ERR, buf, 512));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_BSR, 100, 99));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_FSR, 100, 99));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_FSR, 100, 100));
    STEP(ndmca_check_tape_mtio(sess, E_NO_ERR, M_FSF, 100, 100));
    STEP(ndmca_test_tape_close(sess, E_NO_ERR));
    /* label-style processing, twice */
    for (int pass = 0; pass < 2; pass++) {
        STEP(ndmca_test_tape_open(sess, E_NO_ERR, 0, MODE_RDWR));
        STEP(ndmca_test_tape_mtio(sess, E_NO_ERR, M_REW, 1, 0));
        for (int i = 0; i < 1024; i++)
            buf[i] = (char)((i - 4) & 0xff);
        STEP(ndmca_test_tape_write(sess, E_NO_ERR, buf, 1024));
        STEP(ndmca_tape_mtio(sess, M_EOF, 1, 0));
        STEP(ndmca_test_tape_close(sess, E_NO_ERR));
        STEP(ndmca_test_tape_open(sess, E_NO_ERR, 0, MODE_RDWR));
        STEP(ndmca_test_tape_mtio(sess, E_NO_ERR, M_REW, 1, 0));
        memset(buf, 0, 1024);
        if (pass == 1)
            STEP(ndmca_test_tape_read_2cnt(sess, E_NO_ERR, buf, sizeof buf, 1024));
        else
            STEP(ndmca_test_tape_read(sess, E_NO_ERR, buf, 1024));
        for (int i = 0; i < 1024; i++) {
            if ((unsigned char)buf[i] != ((i - 4) & 0xff)) {
                ndmca_test_fail(sess, "Failed compare");
                return -1;
            }
        }
        STEP(ndmca_test_tape_read(sess, E_EOF, buf, 1024));
        if (v4) {
            ndmca_tape_mtio(sess, M_FSF, 1, 0);
            STEP(ndmca_test_tape_read(sess, E_EOM, buf, 1024));
        } else {
            STEP(ndmca_test_tape_read(sess, E_EOF, buf, 1024));
        }
        STEP(ndmca_test_tape_close(sess, E_NO_ERR));
    }
    return 0;
}
