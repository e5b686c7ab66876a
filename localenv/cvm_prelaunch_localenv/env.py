"""The whole local environment in one object: control plane, chain, app contract, simulator, CRD."""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.chain import chain_profile as find_chain_profile
from cvm_prelaunch_localenv.contracts import AppContract, app_contract_abi, deploy_app_contract
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.paths import kubectl_bin, repo_root
from cvm_prelaunch_localenv.simulator import SimulatorServer

CRD_PATH = Path("crds") / "cloud.phala.com_cvmprelaunchscripts.yaml"


class LocalEnv:
    """Starts the parts in parallel where they are independent; stops them all, always.

    The chain plays a network (``chain_profile``: ``instant``, ``base`` or ``ethereum``, see
    ``chain.CHAIN_PROFILES``); ``chain_id`` and ``block_time`` override the profile's (a block time of
    0 means automine).
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        chain_profile: str = "instant",
        chain_id: int | None = None,
        block_time: float | None = None,
        operation_seconds: float = 1.0,
    ) -> None:
        self.chain_profile = find_chain_profile(chain_profile)
        if block_time is None:
            block_time = self.chain_profile.block_time
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="cvm-localenv-"))
        self.control_plane = ControlPlane(self.work_dir / "kube")
        self.anvil = Anvil(
            chain_id=chain_id if chain_id is not None else self.chain_profile.chain_id,
            block_time=block_time or None,
            log_dir=self.work_dir / "anvil",
        )
        self.simulator: SimulatorServer | None = None
        self._operation_seconds = operation_seconds
        self.start_seconds: float | None = None

    def start(self) -> LocalEnv:
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                kube = pool.submit(self.control_plane.start)
                chain = pool.submit(self.anvil.start)
                chain.result()
                kube.result()
            self.simulator = SimulatorServer(
                rpc_urls={self.anvil.chain_id: self.anvil.rpc_url},
                settings={"operation_seconds": self._operation_seconds},
            ).start()
            self.control_plane.kubectl("apply", "-f", str(repo_root() / CRD_PATH))
            self.control_plane.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/cvmprelaunchscripts.cloud.phala.com",
                "--timeout=30s",
            )
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def deploy_app_contract(self, owner: int = 0, *, allow_any_device: bool = True) -> AppContract:
        account = self.anvil.accounts[owner]
        address = deploy_app_contract(
            self.anvil.rpc_url,
            account.private_key,
            allow_any_device=allow_any_device,
            deployer_private_key=self.anvil.accounts[-1].private_key,
        )
        return AppContract(address=address, owner=account, abi=app_contract_abi())

    @property
    def sim(self) -> SimulatorServer:
        if self.simulator is None:
            raise RuntimeError("the local environment is not started")
        return self.simulator

    def describe(self) -> str:
        lines = [
            f"kube-apiserver  {self.control_plane.server}",
            f"kubeconfig      {self.control_plane.kubeconfig}",
            f"anvil           {self.anvil.rpc_url} (chain id {self.anvil.chain_id}, {self._blocks()})",
            f"phala simulator {self.sim.base_url} (admin {self.sim.admin_url})",
            f"ready in        {self.start_seconds or 0:.1f}s",
            "",
            "Reach the cluster with our kubectl:",
            f"  export KUBECONFIG={self.control_plane.kubeconfig}",
            f"  {kubectl_bin()} get cpls -A",
        ]
        return "\n".join(lines)

    def _blocks(self) -> str:
        block_time = self.anvil.block_time
        mining = f"a block every {block_time:g} s" if block_time else "automine"
        return f"profile {self.chain_profile.name}: {mining}"

    def stop(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None
        self.anvil.stop()
        self.control_plane.stop()

    def __enter__(self) -> LocalEnv:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
