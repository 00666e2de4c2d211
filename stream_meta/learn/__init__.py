"""Online learners and what they keep: episodes, replay memories, regularisers, forgetting probes."""
