"""Landscape"""
