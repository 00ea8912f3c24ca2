"""The user's commands (console scripts): mnist-predict, mnist-promote, mnist-runs. No stage imports them."""
