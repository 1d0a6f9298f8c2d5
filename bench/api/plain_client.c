/*
 * plain_client.c -- the baseline of bench/api: N POSTs of one JSON body,
 * one after another, over one kept-alive libcurl connection, with the
 * headers flexfactor sends (Accept, Content-Type, Authorization: Bearer,
 * no "Expect: 100-continue").  Each answer is read in full and must be
 * HTTP 200.
 *
 *   plain_client URL N BODY_FILE TOKEN
 *
 * Prints one line:
 *   requests=N failures=F elapsed_s=S per_call_us=U
 * and exits 1 if any request failed.
 *
 * Build: gcc -O2 -Wall -o plain_client plain_client.c -lcurl
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

struct buffer
{
	char	   *data;
	size_t		len;
	size_t		cap;
};

static size_t
collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct buffer *b = userdata;
	size_t		n = size * nmemb;

	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 4096;

		while (cap < b->len + n + 1)
			cap *= 2;
		b->data = realloc(b->data, cap);
		if (b->data == NULL)
			return 0;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

static char *
read_file(const char *path, long *len)
{
	FILE	   *f = fopen(path, "rb");
	char	   *data;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	*len = ftell(f);
	fseek(f, 0, SEEK_SET);
	data = malloc(*len + 1);
	if (data == NULL || fread(data, 1, *len, f) != (size_t) *len)
	{
		fclose(f);
		free(data);
		return NULL;
	}
	fclose(f);
	/* a trailing newline (from the shell) is not part of the body */
	while (*len > 0 && (data[*len - 1] == '\n' || data[*len - 1] == '\r'))
		(*len)--;
	data[*len] = '\0';
	return data;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	const char *url;
	long		n;
	long		body_len;
	char	   *body;
	char	   *auth;
	struct curl_slist *headers = NULL;
	struct buffer answer = {0};
	CURL	   *h;
	long		failures = 0;
	double		t0;
	double		elapsed;

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s URL N BODY_FILE TOKEN\n", argv[0]);
		return 2;
	}
	url = argv[1];
	n = atol(argv[2]);
	if (n <= 0)
	{
		fprintf(stderr, "plain_client: N must be positive\n");
		return 2;
	}
	body = read_file(argv[3], &body_len);
	if (body == NULL)
	{
		fprintf(stderr, "plain_client: cannot read %s\n", argv[3]);
		return 2;
	}
	auth = malloc(strlen(argv[4]) + 32);
	sprintf(auth, "Authorization: Bearer %s", argv[4]);

	curl_global_init(CURL_GLOBAL_DEFAULT);
	h = curl_easy_init();
	headers = curl_slist_append(headers, "Accept: application/json");
	headers = curl_slist_append(headers, "Expect:");
	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, auth);

	t0 = now_s();
	for (long i = 0; i < n; i++)
	{
		CURLcode	rc;
		long		status = 0;

		/* the same options flexfactor sets per request on its kept handle */
		curl_easy_reset(h);
		curl_easy_setopt(h, CURLOPT_URL, url);
		curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
		curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, body_len);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
		curl_easy_setopt(h, CURLOPT_WRITEDATA, &answer);
		answer.len = 0;
		rc = curl_easy_perform(h);
		if (rc == CURLE_OK)
			curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
		if (rc != CURLE_OK || status != 200 || answer.len == 0)
		{
			if (failures < 5)
				fprintf(stderr, "plain_client: request %ld: %s, HTTP %ld\n",
						i + 1, curl_easy_strerror(rc), status);
			failures++;
		}
	}
	elapsed = now_s() - t0;

	printf("requests=%ld failures=%ld elapsed_s=%.6f per_call_us=%.2f\n",
		   n, failures, elapsed, elapsed * 1e6 / n);

	curl_easy_cleanup(h);
	curl_slist_free_all(headers);
	curl_global_cleanup();
	free(auth);
	free(body);
	free(answer.data);
	return failures ? 1 : 0;
}
