"""A small async Kubernetes API client: the handful of calls the operator makes, over aiohttp.

kopf already depends on aiohttp and resolves credentials (in-cluster service account or kubeconfig);
this client reuses kopf's ConnectionInfo so both talk to the API with the same identity."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{status}: {message}")


class KubeClient:
    def __init__(self, server: str, *, headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | bool = False) -> None:
        self.server = server.rstrip("/")
        self.headers = headers or {}
        self.ssl = ssl_context if self.server.startswith("https") else False
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kopf(cls, info: Any) -> KubeClient:
        """Same server, credentials and CA as kopf's own connection (kopf.ConnectionInfo)."""
        return cls(info.server, headers=info.as_http_headers(), ssl_context=info.as_ssl_context())

    async def _s(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        session = await self._s()
        headers = {"Content-Type": content_type} if json is not None else {}
        async with session.request(method, self.server + path, json=json, params=params, headers=headers,
                                   ssl=self.ssl) as resp:
            body = await resp.json(content_type=None) if resp.content_length != 0 else None
            if resp.status >= 400:
                raise ApiError(resp.status, body)
            return body

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("POST", path, json=body)

    async def delete(self, path: str, propagation: str = "Foreground") -> Any:
        """Delete; Foreground: the object goes once its dependents (a Job's pods) are gone."""
        return await self.request("DELETE", path, json={"kind": "DeleteOptions", "apiVersion": "v1",
                                                        "propagationPolicy": propagation})

    async def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("PATCH", path, json=body, content_type="application/merge-patch+json")
