/* INCRBYFLOAT's arithmetic as Redis does it: the numbers are C long doubles
 * (80-bit extended precision on x86-64), read with strtold and printed with
 * "%.17Lf" less its trailing zeros, so that ferry's results are Redis's to
 * the last digit (0.1 + 0.2 gives "0.3", as in Redis). These mirror Redis's
 * string2ld and ld2string (LD_STR_HUMAN) in its util.c. */

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Redis's MAX_LONG_DOUBLE_CHARS: the longest text read or written. */
#define FERRY_LONG_DOUBLE_CHARS (5 * 1024)

/* 1 and the value if `s` is a number as Redis reads one: all of it (a NUL
 * byte inside ends nothing), no leading space, not NaN, not out of range;
 * 0 otherwise. */
static int read_long_double(const char *s, size_t len, long double *out) {
    char buf[FERRY_LONG_DOUBLE_CHARS];
    char *end;
    long double value;
    if (len == 0 || len >= sizeof(buf)) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    value = strtold(buf, &end);
    if (isspace((unsigned char)buf[0]) || end[0] != '\0' || (size_t)(end - buf) != len ||
        (errno == ERANGE &&
         (value == HUGE_VAL || value == -HUGE_VAL || fpclassify(value) == FP_ZERO)) ||
        isnan(value))
        return 0;
    *out = value;
    return 1;
}

/* 1 if `s` is a number Redis reads, 2 if it is an infinite one, 0 if it
 * is not a number. */
int ferry_long_double_check(const char *s, size_t len) {
    long double value;
    if (!read_long_double(s, len, &value)) return 0;
    return isinf(value) ? 2 : 1;
}

/* Writes `base` (none: 0) plus `by` to `out` as Redis prints it, and
 * returns its length; or -1 if `base` is not a number, -2 if `by` is not,
 * -3 if the sum is NaN or infinite, -4 if `out` is too small. */
long ferry_long_double_add(const char *base, size_t base_len, const char *by,
                           size_t by_len, char *out, size_t out_len) {
    long double a = 0, b, sum;
    int written;
    size_t len;
    if (base != NULL && !read_long_double(base, base_len, &a)) return -1;
    if (!read_long_double(by, by_len, &b)) return -2;
    sum = a + b;
    if (isnan(sum) || isinf(sum)) return -3;
    written = snprintf(out, out_len, "%.17Lf", sum);
    if (written < 0 || (size_t)written + 1 > out_len) return -4;
    len = (size_t)written;
    if (memchr(out, '.', len) != NULL) {
        while (out[len - 1] == '0') len--;
        if (out[len - 1] == '.') len--;
    }
    if (len == 2 && out[0] == '-' && out[1] == '0') {
        out[0] = '0';
        len = 1;
    }
    return (long)len;
}
