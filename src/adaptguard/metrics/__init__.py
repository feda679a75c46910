"""Verification statistics, FID/KID, and cost accounting."""
