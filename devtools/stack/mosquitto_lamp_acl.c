/*
 * The lamps' ACL for the local Mosquitto 2.0 (plugin API v5), built by `veilleuse stack up`.
 *
 * Why a plugin: Mosquitto 2.0's acl_file keeps its `user` sections in a linked list that it
 * scans for every line it parses and for every client it re-applies on a reload: with one
 * section per lamp, a reload at 100,000 lamps stalled the broker for minutes (docs/mqtt.md).
 * Its dynamic-security plugin cannot express "this lamp, under its own site" with one rule
 * (no %u in its ACLs before 2.1) and rewrites its whole JSON after every command.
 *
 * What it does: it reads `lamp_id site_id` lines (plugin_opt_lamps_file, written by
 * pipeline/lamps.py) into a sorted array, again on every SIGHUP, and answers the ACL check
 * of a client whose username is a lamp: it may publish (and leave a will or a retained
 * message) under lamps/<its site>/<its lamp_id> and below, and receive nothing. Any other
 * username is left to the acl_file (the pipeline's own accounts): the plugin's callback runs
 * first because plugins are initialised before the acl_file.
 * Authentication stays with password_file.
 *
 * The broker is single-threaded: no locking. A table that fails to load on a reload leaves
 * the previous one in place (logged), so a bad file never opens or closes every lamp at once.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

struct lamp {
	const char *lamp_id;
	const char *site_id;
};

struct table {
	char *text;          /* the file's bytes; lamp_id and site_id point into it */
	struct lamp *lamps;  /* sorted by lamp_id */
	size_t count;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static char *lamps_file = NULL;
static struct table current = {NULL, NULL, 0};

static int by_lamp_id(const void *a, const void *b)
{
	return strcmp(((const struct lamp *)a)->lamp_id, ((const struct lamp *)b)->lamp_id);
}

static void table_free(struct table *t)
{
	free(t->text);
	free(t->lamps);
	t->text = NULL;
	t->lamps = NULL;
	t->count = 0;
}

/* Reads the whole file, then splits it in place: one "lamp_id site_id" per line. */
static int table_load(const char *path, struct table *out)
{
	FILE *f;
	long size;
	size_t lines = 0, i;
	char *p, *line, *next, *space;

	f = fopen(path, "rb");
	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "lamp_acl: cannot open %s: %s", path, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	if(fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0){
		fclose(f);
		return MOSQ_ERR_UNKNOWN;
	}
	out->text = malloc((size_t)size + 1);
	if(out->text == NULL){
		fclose(f);
		return MOSQ_ERR_NOMEM;
	}
	if(fread(out->text, 1, (size_t)size, f) != (size_t)size){
		fclose(f);
		table_free(out);
		mosquitto_log_printf(MOSQ_LOG_ERR, "lamp_acl: short read of %s", path);
		return MOSQ_ERR_UNKNOWN;
	}
	fclose(f);
	out->text[size] = '\0';
	for(p = out->text; *p; p++){
		if(*p == '\n') lines++;
	}
	out->lamps = calloc(lines + 1, sizeof(struct lamp));
	if(out->lamps == NULL){
		table_free(out);
		return MOSQ_ERR_NOMEM;
	}
	out->count = 0;
	for(line = out->text; line && *line; line = next){
		next = strchr(line, '\n');
		if(next){
			*next = '\0';
			next++;
		}
		if(*line == '\0' || *line == '#') continue;
		space = strchr(line, ' ');
		if(space == NULL || space == line || space[1] == '\0' || strchr(space + 1, ' ')){
			mosquitto_log_printf(MOSQ_LOG_ERR, "lamp_acl: malformed line in %s: %s", path, line);
			table_free(out);
			return MOSQ_ERR_INVAL;
		}
		*space = '\0';
		out->lamps[out->count].lamp_id = line;
		out->lamps[out->count].site_id = space + 1;
		out->count++;
	}
	qsort(out->lamps, out->count, sizeof(struct lamp), by_lamp_id);
	for(i = 1; i < out->count; i++){
		if(strcmp(out->lamps[i - 1].lamp_id, out->lamps[i].lamp_id) == 0){
			mosquitto_log_printf(MOSQ_LOG_ERR, "lamp_acl: lamp %s listed twice in %s",
					out->lamps[i].lamp_id, path);
			table_free(out);
			return MOSQ_ERR_INVAL;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int reload(void)
{
	struct table fresh = {NULL, NULL, 0};
	int rc = table_load(lamps_file, &fresh);

	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "lamp_acl: keeping the previous %zu lamps", current.count);
		return rc;
	}
	table_free(&current);
	current = fresh;
	mosquitto_log_printf(MOSQ_LOG_INFO, "lamp_acl: %zu lamps from %s", current.count, lamps_file);
	return MOSQ_ERR_SUCCESS;
}

static const char *site_of(const char *username)
{
	struct lamp key = {username, NULL};
	const struct lamp *found;

	if(current.count == 0) return NULL;
	found = bsearch(&key, current.lamps, current.count, sizeof(struct lamp), by_lamp_id);
	return found ? found->site_id : NULL;
}

/* lamps/<site>/<lamp> or anything below it: what `lamps/<site>/<lamp>/#` matches. */
static bool own_topic(const char *topic, const char *site_id, const char *lamp_id)
{
	size_t site_len = strlen(site_id), lamp_len = strlen(lamp_id);

	if(strncmp(topic, "lamps/", 6) != 0) return false;
	topic += 6;
	if(strncmp(topic, site_id, site_len) != 0 || topic[site_len] != '/') return false;
	topic += site_len + 1;
	if(strncmp(topic, lamp_id, lamp_len) != 0) return false;
	return topic[lamp_len] == '\0' || topic[lamp_len] == '/';
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username, *site_id;

	(void)event;
	(void)userdata;
	username = mosquitto_client_username(ed->client);
	if(username == NULL) return MOSQ_ERR_PLUGIN_DEFER;
	site_id = site_of(username);
	if(site_id == NULL) return MOSQ_ERR_PLUGIN_DEFER; /* not a lamp: the acl_file decides */
	/* As with the acl_file: a subscription is accepted and what it may receive is checked at
	 * each delivery (MOSQ_ACL_READ, denied below), so a session restored after a restart is
	 * held to the same rule as a live one. */
	if(ed->access == MOSQ_ACL_SUBSCRIBE || ed->access == MOSQ_ACL_UNSUBSCRIBE){
		return MOSQ_ERR_SUCCESS;
	}
	if(ed->access == MOSQ_ACL_WRITE && ed->topic && own_topic(ed->topic, site_id, username)){
		return MOSQ_ERR_SUCCESS;
	}
	return MOSQ_ERR_ACL_DENIED;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	reload();
	/* Defer: the reload callbacks of any other plugin still run. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;

	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "lamps_file") == 0){
			lamps_file = strdup(options[i].value);
		}
	}
	if(lamps_file == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "lamp_acl: plugin_opt_lamps_file is required");
		return MOSQ_ERR_INVAL;
	}
	rc = reload();
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(plugin_id){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	}
	table_free(&current);
	free(lamps_file);
	lamps_file = NULL;
	return MOSQ_ERR_SUCCESS;
}
