"""The editor's Qt-free model: compositions, undoable commands, session, rendering, heatmaps."""
