/* cmd-model.c: placeholder until the owning module lands (replaced, not kept). */
#include "cli/cli.h"
#include <stdio.h>
static int cmd_model_info_exec(int argc, char **argv)
{
	(void)argc; (void)argv;
	fprintf(stderr, "kvscope: not built yet\n");
	return CLI_FAIL;
}
const struct cli_cmd cmd_model_info = { "model", "", "", cmd_model_info_exec };
