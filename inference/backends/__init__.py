"""inference/backends"""
