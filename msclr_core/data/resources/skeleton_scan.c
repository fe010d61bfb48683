/* One pass over the bytes of an NTU RGB+D .skeleton file (format: ntu_reader.py).
 *
 * Optional accelerator for msclr_core.data.ntu_reader: compiled on first use with the system C
 * compiler and loaded with ctypes; without a compiler the numpy fast path does the same job.
 * It accepts a strict subset of what the line parser (_read_strict) accepts, and reads it
 * identically:
 *   - values are float literals [+-](digits[.digits] | .digits)[(e|E)[+-]digits], split by
 *     single spaces, lines end in LF or CRLF (the last one may end the file instead);
 *   - counts and body IDs are 1-18 plain digits, numJoint is 25;
 *   - x, y, z: digits -> an exact integer mantissa, one division by an exact power of ten
 *     (correctly rounded: the same double as Python's float(text)); exponents and longer
 *     mantissas go through strtod (also correctly rounded in glibc; checked to consume
 *     the whole token, so a non-C locale cannot change a value, it only sends the file on).
 * Anything else returns NOT_FAST and the Python side decides (and names the line on errors).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NOT_FAST (-1)
#define TOO_SMALL (-2)
#define NUM_JOINTS 25
#define INFO_FIELDS 10
#define JOINT_FIELDS 12

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

typedef struct {
    const char *p, *end;
} Cursor;

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* A line break (LF or CRLF) or the end of the data. */
static int line_end(Cursor *c) {
    if (c->p == c->end) return 1;
    if (*c->p == '\r') c->p++;
    if (c->p < c->end && *c->p == '\n') {
        c->p++;
        return 1;
    }
    return 0;
}

/* 1-18 plain digits. */
static int uint_token(Cursor *c, int64_t *value) {
    const char *start = c->p;
    int64_t v = 0;
    while (c->p < c->end && is_digit(*c->p)) v = v * 10 + (*c->p++ - '0');
    if (c->p == start || c->p - start > 18) return 0;
    *value = v;
    return 1;
}

static int count_line(Cursor *c, int64_t *value) { return uint_token(c, value) && line_end(c); }

/* A float literal; its value in *value when value is not NULL. */
static int float_token(Cursor *c, double *value) {
    const char *start = c->p;
    int negative = 0, digits = 0, frac = 0, exact = 1;
    uint64_t mantissa = 0;
    if (c->p < c->end && (*c->p == '-' || *c->p == '+')) negative = *c->p++ == '-';
    for (int part = 0; part < 2; part++) { /* digits before, then after the point */
        while (c->p < c->end && is_digit(*c->p)) {
            if (mantissa > (UINT64_C(1) << 53) / 10) exact = 0;
            mantissa = mantissa * 10 + (uint64_t)(*c->p++ - '0');
            digits++;
            frac += part;
        }
        if (part == 0) {
            if (c->p == c->end || *c->p != '.') break;
            c->p++;
        }
    }
    if (digits == 0) return 0;
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '-' || *c->p == '+')) c->p++;
        const char *exp_start = c->p;
        while (c->p < c->end && is_digit(*c->p)) c->p++;
        if (c->p == exp_start) return 0;
        exact = 0;
    }
    if (!value) return 1;
    if (exact && mantissa <= (UINT64_C(1) << 53) && frac <= 22) {
        double v = (double)mantissa / POW10[frac];
        *value = negative ? -v : v;
        return 1;
    }
    char text[64]; /* rare: strtod on a NUL-terminated copy */
    size_t n = (size_t)(c->p - start);
    if (n >= sizeof text) return 0;
    memcpy(text, start, n);
    text[n] = 0;
    char *stop;
    *value = strtod(text, &stop);
    return stop == text + n;
}

/* `count` values split by single spaces, then a line end; the first `keep` values stored. */
static int value_line(Cursor *c, int count, int keep, double *out) {
    for (int k = 0; k < count; k++) {
        if (k && (c->p == c->end || *c->p++ != ' ')) return 0;
        if (!float_token(c, k < keep ? out + k : NULL)) return 0;
    }
    return line_end(c);
}

/* Returns the number of body records, NOT_FAST, or TOO_SMALL (more than `capacity` records). */
long msclr_scan_skeleton(const char *data, long size, long capacity, int64_t *frame_of, int64_t *ids, double *xyz,
                         int64_t *n_frames) {
    Cursor c = {data, data + size};
    int64_t frames, bodies, joints;
    long r = 0;
    if (!count_line(&c, &frames)) return NOT_FAST;
    for (int64_t f = 0; f < frames; f++) {
        if (!count_line(&c, &bodies)) return NOT_FAST;
        for (int64_t b = 0; b < bodies; b++, r++) {
            if (r >= capacity) return TOO_SMALL;
            if (!uint_token(&c, &ids[r]) || c.p == c.end || *c.p++ != ' ') return NOT_FAST;
            if (!value_line(&c, INFO_FIELDS - 1, 0, NULL)) return NOT_FAST;
            if (!count_line(&c, &joints) || joints != NUM_JOINTS) return NOT_FAST;
            for (int j = 0; j < NUM_JOINTS; j++)
                if (!value_line(&c, JOINT_FIELDS, 3, xyz + (r * NUM_JOINTS + j) * 3)) return NOT_FAST;
            frame_of[r] = f;
        }
    }
    if (c.p != c.end) return NOT_FAST; /* trailing data, or blank lines: the line parser decides */
    *n_frames = frames;
    return r;
}
