"""2D EMC"""
