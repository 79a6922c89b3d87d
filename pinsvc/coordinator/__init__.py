"""The coordinator: rolls PinnedImageSets out per MachineConfigPool across node agents."""
