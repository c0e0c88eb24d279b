/*
 * test.h: the unit tests' tiny harness. Each check prints a line only when it
 * fails (file:line, the expression and the values), and t_done() prints a
 * summary and returns the exit status automake expects (0 pass, 1 fail,
 * 77 skip, 99 hard error).
 */
#ifndef KVS_TEST_H
#define KVS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_checks, t_failures;

#define T_CHECK(cond, ...)                                                   \
	do {                                                                     \
		t_checks++;                                                          \
		if (!(cond)) {                                                       \
			t_failures++;                                                    \
			fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                    \
			fputc('\n', stderr);                                             \
		}                                                                    \
	} while (0)

#define T_EQ_INT(a, b)                                                     \
	do {                                                                   \
		long long t_a_ = (long long)(a), t_b_ = (long long)(b);            \
		T_CHECK(t_a_ == t_b_, "%s = %lld, expected %lld", #a, t_a_, t_b_); \
	} while (0)

#define T_EQ_STR(a, b)                                                                       \
	do {                                                                                     \
		const char *t_a_ = (a), *t_b_ = (b);                                                 \
		T_CHECK(t_a_ != NULL && strcmp(t_a_, t_b_) == 0, "%s = \"%s\", expected \"%s\"", #a, \
		        t_a_ ? t_a_ : "(null)", t_b_);                                               \
	} while (0)

#define T_NEAR(a, b, tol)                                                                        \
	do {                                                                                         \
		double t_a_ = (double)(a), t_b_ = (double)(b);                                           \
		T_CHECK(fabs(t_a_ - t_b_) <= (tol), "%s = %.9g, expected %.9g (tol %g)", #a, t_a_, t_b_, \
		        (double)(tol));                                                                  \
	} while (0)

/* Print the summary; return the process exit status. */
static inline int t_done(const char *name)
{
	printf("%s: %d checks, %d failed\n", name, t_checks, t_failures);
	return t_failures ? 1 : 0;
}

#endif
