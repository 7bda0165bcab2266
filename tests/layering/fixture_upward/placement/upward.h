// Fixture: placement/ may include only core/; this include of parallel/ must be reported.
#pragma once
#include "parallel/process_groups.h"
