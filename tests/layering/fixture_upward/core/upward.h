// Fixture for the layering check: core (the bottom) including trainer (above it) must be caught.
#pragma once
#include "trainer/loop.h"
