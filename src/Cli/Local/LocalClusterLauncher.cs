using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using LiveMigration.Cli.Api;

namespace LiveMigration.Cli.Local;

/// <summary>What <c>lsm local up</c> starts. <see cref="ApiPort"/> 0 picks a free port (tests, the demo).</summary>
public sealed record LocalClusterOptions(string DataDirectory)
{
    public const int DefaultApiPort = 9110;

    public int Hosts { get; init; } = 2;

    /// <summary>
    /// How many Coordinators: coordinator (the first, API on <see cref="ApiPort"/>), coordinator-2 … (API on the next ports,
    /// or free ones with <see cref="ApiPort"/> 0). More than one needs a PostgreSQL journal they all share.
    /// </summary>
    public int Coordinators { get; init; } = 1;

    public const int MaxCoordinators = 9;

    /// <summary>How many hosts (host-1 … host-K) may hold the SPM role; each of them is fenced by the pool's lease.</summary>
    public int SpmHosts { get; init; } = 1;

    public bool IsSpmCapable(string hostId) => int.TryParse(hostId.AsSpan("host-".Length), out var n) && n <= SpmHosts;
    public int ApiPort { get; init; } = DefaultApiPort;

    /// <summary>"sqlite" (files under the Coordinator's data directory) or a PostgreSQL connection: postgres://user:password@host:port/db or Npgsql's Host=...;Database=...</summary>
    public string Journal { get; init; } = "sqlite";

    /// <summary>Extra HOCON for every node (tests pass fast cluster timings).</summary>
    public string? ExtraHocon { get; init; }

    /// <summary>How long the cluster gets to come up before up gives up and stops what it started.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>Every host's hypervisor adapter: "qmp" (QEMU's monitor, the default) or "libvirt" (a libvirtd on this machine runs the VMs).</summary>
    public string Hypervisor { get; init; } = "qmp";

    /// <summary>The Coordinators' admission limits: migrations at once per host and per storage domain (0 = none); null = the Coordinator's default.</summary>
    public int? MaxPerHost { get; init; }
    public int? MaxPerDomain { get; init; }

    /// <summary>With the sim hypervisor: the rate its copies and mirrors run at, bytes/s; 0 = instant.</summary>
    public long SimCopyBytesPerSecond { get; init; }

    /// <summary>
    /// The sim hosts all run in one process of this name (<c>HostNode --hypervisor sim --sim-hosts N</c>): they share the
    /// in-memory domains as real hosts share the storage they mount.
    /// </summary>
    public const string SimHostsNode = "sim-hosts";

    /// <summary>The libvirt connection of the hosts when <see cref="Hypervisor"/> is libvirt.</summary>
    public string LibvirtUri { get; init; } = LibvirtCheck.DefaultUri;

    /// <summary>libvirt hosts export each VM drive over NBD for the demo's stand-in guest (demo and tests only: it taints the domain).</summary>
    public bool LibvirtGuestExport { get; init; }

    /// <summary>Network-partition tests: the cluster address of a node, by node name (coordinator, host-1, …); the others use loopback.</summary>
    public IReadOnlyDictionary<string, string> NodeHostnames { get; init; } = new Dictionary<string, string>();

    /// <summary>Network-partition tests: the network namespace a node runs in (made by the test, with a veth link), by node name.</summary>
    public IReadOnlyDictionary<string, string> NodeNetworkNamespaces { get; init; } = new Dictionary<string, string>();

    /// <summary>The unprivileged account the QMP hosts start QEMU as (<see cref="LocalQemuAccount"/>); null: the invoking user.</summary>
    public string? QemuUser { get; init; }

    /// <summary>The SPM's bound on copies at once (<c>--spm-max-copies</c>; 0 = none); null = the host's default.</summary>
    public int? SpmMaxCopies { get; init; }

    /// <summary>The HostNode switches these options add to every host.</summary>
    public IReadOnlyList<string> HostArguments =>
    [
        .. Hypervisor switch
        {
            "qmp" => QemuUser is { } qemuUser ? new[] { "--qemu-user", qemuUser } : [],
            "libvirt" => ["--hypervisor", "libvirt", "--libvirt-uri", LibvirtUri, .. LibvirtGuestExport ? new[] { "--libvirt-guest-export", "true" } : []],
            "sim" => ["--hypervisor", "sim", "--sim-hosts", Hosts.ToString(), "--sim-spm-hosts", SpmHosts.ToString(), "--sim-copy-rate", SimCopyBytesPerSecond.ToString()],
            _ => throw CliFailure.BadUsage($"--hypervisor {Hypervisor}: a host runs its VMs through qmp, libvirt or sim"),
        },
        .. SpmMaxCopies is { } maxCopies ? new[] { "--spm-max-copies", maxCopies.ToString(System.Globalization.CultureInfo.InvariantCulture) } : [],
    ];

    public string DomainRoot => LocalCluster.DomainRootOf(DataDirectory);

    /// <summary>Folders besides DATA/domains where <c>lsm domain create --path</c> may put domains (<c>--storage-root</c>, repeatable).</summary>
    public IReadOnlyList<string> StorageRoots { get; init; } = [];

    public string HostRunDirectory(string hostId) => LocalCluster.HostRunDirectoryOf(DataDirectory, hostId);
}

/// <summary>What <c>lsm local down</c> stopped.</summary>
public sealed record LocalDownResult(IReadOnlyList<LocalNodeState> StoppedNodes, IReadOnlyList<int> StoppedVmPids)
{
    /// <summary>The libvirt domains of libvirt hosts that down destroyed.</summary>
    public IReadOnlyList<string> StoppedDomains { get; init; } = [];

    public bool NothingRan => StoppedNodes.Count == 0 && StoppedVmPids.Count == 0 && StoppedDomains.Count == 0;
}

/// <summary>
/// The one way a local cluster is started and stopped: <c>lsm local up/status/down</c> and the README's demo call
/// these. Up starts a Coordinator and hosts host-1…host-N (host-1 SPM-capable, every host a seed beside the
/// Coordinator), detached, records them in DATA/local.json and returns once every member is Up and every host has
/// reported to the inventory; down stops them by pid, then the VMs their hosts ran.
/// </summary>
public static class LocalClusterLauncher
{
    /// <summary>./var/local under the working directory: beside the demo's ./var/demo, out of the way of both.</summary>
    public static string DefaultDataDirectory => Path.GetFullPath(Path.Combine("var", "local"));

    public static async Task<LocalClusterState> UpAsync(LocalClusterOptions options, Action<string>? report = null, CancellationToken ct = default)
    {
        if (options.Hosts is < 1 or > 16)
            throw CliFailure.BadUsage($"--hosts {options.Hosts}: a local cluster has 1 to 16 hosts");
        if (options.SpmHosts < 1 || options.SpmHosts > options.Hosts)
            throw CliFailure.BadUsage($"--spm-hosts {options.SpmHosts}: 1 to the number of hosts ({options.Hosts}) may hold the SPM role");
        if (options.ApiPort is < 0 or > 65535)
            throw CliFailure.BadUsage($"--api-port {options.ApiPort} is not a port (1-65535, or 0 for a free one)");
        if (options.Coordinators is < 1 or > LocalClusterOptions.MaxCoordinators)
            throw CliFailure.BadUsage($"--coordinators {options.Coordinators}: a local cluster has 1 to {LocalClusterOptions.MaxCoordinators} Coordinators");
        var postgres = PostgresConnection(options.Journal);
        if (options.Coordinators > 1 && postgres is null)
            throw CliFailure.BadUsage(CoordinatorsNeedPostgres(options.Coordinators));
        // Before anything starts: a libvirt host refuses to start without its daemon, after the cluster waited for it.
        if (options.Hypervisor == "libvirt") await LibvirtCheck.EnsureAnswersAsync(options.LibvirtUri, ct);
        var dataDirectory = Path.GetFullPath(options.DataDirectory);
        Directory.CreateDirectory(dataDirectory);
        if (options.Hypervisor == "qmp" && options.QemuUser is null)
            options = options with { QemuUser = await LocalQemuAccount.PrepareAsync(dataDirectory, CheckedStorageRoots(options.StorageRoots), report, ct) };
        var hostArguments = options.HostArguments;

        // The lock keeps two ups on one directory from racing; the state file refuses an up while the whole last one runs,
        // and brings back only the nodes of it that died while the others run.
        await using var upLock = TakeLock(dataDirectory);
        if (await LocalClusterState.ReadAsync(dataDirectory, ct) is { } previous && previous.AliveNodes is { Count: > 0 } alive)
        {
            if (alive.Count < previous.Nodes.Count) return await RestartMissingAsync(previous, options, report, ct);
            throw CliFailure.BadUsage($"a local cluster already runs in {dataDirectory} ({string.Join(", ", alive.Select(n => $"{n.Name} pid {n.Pid}"))}, API {previous.ApiUrl}); " +
                                      $"stop it first: lsm local down --data-dir {dataDirectory}");
        }
        if (options.ApiPort != 0 && !PortIsFree(options.ApiPort))
            throw CliFailure.BadUsage($"port {options.ApiPort} on 127.0.0.1 is in use (another Coordinator?); choose another with --api-port, e.g. --api-port 9111");
        // the other Coordinators' APIs on the ports after --api-port, so an operator knows where each one answers
        foreach (var number in Enumerable.Range(2, options.Coordinators - 1).Where(_ => options.ApiPort != 0))
            if (options.ApiPort + number - 1 is var port && (port > 65535 || !PortIsFree(port)))
                throw CliFailure.BadUsage($"port {port} on 127.0.0.1, the API of {LocalCluster.CoordinatorName(number)} (--api-port {options.ApiPort} + {number - 1}), " +
                                          "is in use; choose another --api-port, or --api-port 0 for free ones");

        // An up after a down brings back the cluster it was: the storage roots it was given before stay allowed (its hosts'
        // domains live there, and without them a host attaches none of them and no VM on them starts again).
        var previousRoots = await LocalClusterState.ReadAsync(dataDirectory, ct) is { } stopped ? stopped.StorageRoots : [];
        var storageRoots = CheckedStorageRoots(previousRoots.Concat(options.StorageRoots).Distinct().ToList());
        var tokenFile = ApiTokenFileFor(dataDirectory);
        var tls = OpenTls(dataDirectory);
        var hostIds = Enumerable.Range(1, options.Hosts).Select(i => $"host-{i}").ToList();
        var sim = options.Hypervisor == "sim";
        // the fixed API ports first (--api-port and the ones after it for the other Coordinators), then free cluster ports around them
        List<int> taken = options.ApiPort == 0 ? [] : [.. Enumerable.Range(options.ApiPort, options.Coordinators)];
        var coordinatorPort = LocalCluster.FreePort([.. taken]);
        taken.Add(coordinatorPort);
        var httpPort = options.ApiPort == 0 ? LocalCluster.FreePort([.. taken]) : options.ApiPort;
        taken.Add(httpPort);
        var moreCoordinators = new Dictionary<string, CoordinatorPorts>();
        foreach (var number in Enumerable.Range(2, options.Coordinators - 1))
        {
            var port = LocalCluster.FreePort([.. taken]);
            taken.Add(port);
            var http = options.ApiPort == 0 ? LocalCluster.FreePort([.. taken]) : options.ApiPort + number - 1;
            taken.Add(http);
            moreCoordinators[LocalCluster.CoordinatorName(number)] = new CoordinatorPorts(port, http);
        }
        var cluster = new LocalCluster(dataDirectory)
        {
            CoordinatorPort = coordinatorPort,
            HttpPort = httpPort,
            MoreCoordinators = moreCoordinators,
            // the sim process's first host listens on the fixed port, its others on any free one
            SeedHosts = sim ? [LocalClusterOptions.SimHostsNode] : hostIds,
            ExtraHocon = options.ExtraHocon,
            PostgresConnectionString = postgres,
            MaxPerHost = options.MaxPerHost,
            MaxPerDomain = options.MaxPerDomain,
            HostArguments = hostArguments,
            NodeHostnames = options.NodeHostnames,
            NodeNetworkNamespaces = options.NodeNetworkNamespaces,
            StorageRoots = storageRoots,
            ApiTokenFile = tokenFile,
            Tls = tls,
        };
        Directory.CreateDirectory(cluster.DomainRoot);
        var started = DateTimeOffset.UtcNow;
        LocalClusterState State() => new(dataDirectory, cluster.ApiUrl, cluster.HttpPort, JournalLabel(options.Journal), cluster.DomainRoot, started,
            cluster.Nodes.Select(n => new LocalNodeState(n.Name, RoleOf(n.Name, options),
                n.Pid, n.StartTime, n.Port, n.Address, n.LogPath,
                IsCoordinator(n.Name) ? Path.Combine(dataDirectory, n.Name) : cluster.HostDataDirectory(n.Name))
            {
                ApiUrl = IsCoordinator(n.Name) ? cluster.ApiUrlOf(n.Name) : null,
                Hostname = options.NodeHostnames.GetValueOrDefault(n.Name),
                NetworkNamespace = options.NodeNetworkNamespaces.GetValueOrDefault(n.Name),
            }).ToList())
        {
            Hypervisor = options.Hypervisor,
            LibvirtUri = options.Hypervisor == "libvirt" ? options.LibvirtUri : null,
            SimHosts = sim ? options.Hosts : 0,
            StorageRoots = storageRoots,
            ApiTokenFile = tokenFile,
            TlsFolder = tls.Folder,
        };

        try
        {
            // Each start is recorded at once, so a down finds whatever got started even if up itself is killed.
            var coordinator = cluster.StartCoordinator();
            await State().WriteAsync(ct);
            report?.Invoke($"coordinator pid {coordinator.Pid}, cluster port {coordinator.Port}, API {cluster.ApiUrl}");
            if (options.Coordinators > 1)
            {
                // The others join once the first is Up and its inventory answers: the cluster is formed, and the first
                // persistent actor has created the journal's tables, which concurrent CREATE TABLE IF NOT EXISTS of
                // several fresh Coordinators could race on in PostgreSQL.
                await WaitInventoryAsync(cluster, coordinator, options.Timeout, ct);
                foreach (var name in cluster.CoordinatorNames.Skip(1))
                {
                    var more = cluster.StartCoordinator(name);
                    await State().WriteAsync(ct);
                    report?.Invoke($"{name} pid {more.Pid}, cluster port {more.Port}, API {cluster.ApiUrlOf(name)}");
                }
            }
            if (sim)
            {
                var hosts = cluster.StartHost(LocalClusterOptions.SimHostsNode, spm: true);
                await State().WriteAsync(ct);
                report?.Invoke($"{string.Join(", ", hostIds)} (sim, in one process) pid {hosts.Pid}, cluster port {hosts.Port} and free ones");
            }
            foreach (var hostId in sim ? [] : hostIds)
            {
                var spm = options.IsSpmCapable(hostId);
                var host = cluster.StartHost(hostId, spm);
                await State().WriteAsync(ct);
                report?.Invoke($"{hostId} pid {host.Pid}, cluster port {host.Port}{(spm ? ", SPM-capable" : "")}");
                // The SPM singleton runs on the oldest SPM-capable member, and members that come Up together have no
                // defined age: host-1 is Up before the next SPM-capable host starts, so it is the first SPM.
                if (spm && options.IsSpmCapable($"host-{hostIds.IndexOf(hostId) + 2}"))
                    await WaitMemberUpAsync(cluster, host, options.Timeout, ct);
            }
            // every host must report to this run's inventory: the journal still holds their reports from before a down, with old addresses
            await WaitUpAsync(cluster, hostIds, options.Coordinators, options.Timeout, ct, hostIds, started);
        }
        catch (Exception e) when (e is not CliFailure)
        {
            var tails = LogTails(cluster.LogDirectory);
            await LocalCluster.StopAsync(cluster.Nodes, LocalCluster.StopGrace);
            await State().WriteAsync(CancellationToken.None);
            if (e is OperationCanceledException) throw;
            throw CliFailure.Failed($"{e.Message}; stopped what was started\n{tails}");
        }
        var state = State();
        cluster.Release();
        return state;
    }

    /// <summary>What the state file records of a node: the Coordinator, a host (SPM-capable or not), or the sim hosts' process.</summary>
    private static string RoleOf(string node, LocalClusterOptions options) =>
        IsCoordinator(node) ? "coordinator"
        : node == LocalClusterOptions.SimHostsNode ? "host,spm,sim"
        : options.IsSpmCapable(node) ? "host,spm" : "host";

    /// <summary>
    /// Some nodes of the cluster in the state file died (a crash, a SIGKILL): starts exactly those again, hosts on the ports
    /// and all with the roles the state file recorded, the Coordinator on a fresh port replacing its old incarnation, and
    /// each with its own address last among the seeds (they rejoin the running members),
    /// dead hosts of a running Coordinator only after their old incarnations were downed and removed
    /// (<see cref="OldIncarnation"/>), records their new pids, and returns once every member is Up and reachable and every
    /// restarted host has reported.
    /// The nodes still running are left alone. The journal and the hypervisor must be the ones the cluster runs with.
    /// </summary>
    private static async Task<LocalClusterState> RestartMissingAsync(LocalClusterState previous, LocalClusterOptions options, Action<string>? report, CancellationToken ct)
    {
        if (JournalLabel(options.Journal) != previous.Journal)
            throw CliFailure.BadUsage($"the local cluster in {previous.DataDirectory} runs with the journal {previous.Journal}: give the same --journal to restart its stopped nodes");
        if (options.Hypervisor != previous.Hypervisor)
            throw CliFailure.BadUsage($"the local cluster in {previous.DataDirectory} runs its hosts on {previous.Hypervisor}: give --hypervisor {previous.Hypervisor} to restart its stopped nodes");
        if (previous.Nodes.FirstOrDefault(n => n.Name == LocalClusterOptions.SimHostsNode) is { Alive: false })
            throw CliFailure.BadUsage($"the sim hosts of the local cluster in {previous.DataDirectory} died, and their VMs and domains lived in their memory: " +
                                      $"stop the cluster with lsm local down --data-dir {previous.DataDirectory} and start a new one");
        var hosts = previous.Nodes.Where(n => n.Role.StartsWith("host")).ToList();
        var coordinator = previous.Nodes.FirstOrDefault(n => n.Name == LocalCluster.FirstCoordinator) ?? previous.Nodes.FirstOrDefault(n => !n.Role.StartsWith("host"));
        // the other Coordinators: a running one keeps its ports, a dead one comes back on a fresh cluster port (as the first
        // does) and on the API port the state file recorded for it
        List<int> taken = [previous.ApiPort, .. previous.Nodes.Select(n => n.Port), .. previous.Nodes.Select(n => n.ApiPort)];
        var moreCoordinators = new Dictionary<string, CoordinatorPorts>();
        foreach (var more in previous.Nodes.Where(n => IsCoordinator(n.Name) && n.Name != LocalCluster.FirstCoordinator))
        {
            var port = more.Alive ? more.Port : LocalCluster.FreePort([.. taken]);
            taken.Add(port);
            moreCoordinators[more.Name] = new CoordinatorPorts(port, more.ApiPort);
        }
        var cluster = new LocalCluster(previous.DataDirectory)
        {
            // A dead Coordinator comes back on a fresh port and downs its old incarnation itself (--replaces): on its old
            // address it could meet a peer's redial of the old one in flight, which Akka.Remote leaves a connection nobody
            // writes on (PredecessorDowning says more). Its peers' seed lists are not needed again: running members know it
            // by gossip, and a node restarted later takes its seeds from the state file, which records the new port.
            CoordinatorPort = coordinator is null
                ? throw CliFailure.Failed($"{LocalClusterState.PathIn(previous.DataDirectory)} lists no coordinator; stop the cluster with lsm local down")
                : coordinator.Alive ? coordinator.Port : LocalCluster.FreePort([.. taken]),
            HttpPort = previous.ApiPort,
            MoreCoordinators = moreCoordinators,
            SeedHosts = hosts.Select(h => h.Name).ToList(),
            KnownHostPorts = hosts.Where(h => h.Port > 0).ToDictionary(h => h.Name, h => h.Port),
            ExtraHocon = options.ExtraHocon,
            PostgresConnectionString = PostgresConnection(options.Journal),
            HostArguments = (options with { LibvirtUri = previous.LibvirtUri ?? options.LibvirtUri }).HostArguments,
            // where the state file says each node lives, whatever this up was given: a restart must not move a node
            NodeHostnames = previous.Nodes.Where(n => n.Hostname is not null).ToDictionary(n => n.Name, n => n.Hostname!),
            NodeNetworkNamespaces = previous.Nodes.Where(n => n.NetworkNamespace is not null).ToDictionary(n => n.Name, n => n.NetworkNamespace!),
            // the roots the running hosts allow: a restarted host must allow the same, or it would drop their domains
            StorageRoots = previous.StorageRoots,
            ApiTokenFile = previous.ApiTokenFile,
            // as the running nodes do: TLS with the cluster's CA, or plain when they were started before TLS
            Tls = previous.TlsFolder is null ? null : OpenTls(previous.DataDirectory),
        };
        var nodes = previous.Nodes.ToList();
        var restartedAt = DateTimeOffset.UtcNow;
        var restartedHosts = new List<string>();
        LocalClusterState State() => previous with { Nodes = nodes.ToList() };
        try
        {
            var deadNodes = previous.Nodes.Where(n => !n.Alive).ToList();
            // Hosts come back on their old addresses only once no member holds their old incarnations (OldIncarnation says
            // why), which the running Coordinator is asked to make sure of. A dead Coordinator has no API left to ask:
            // then every dead node comes back at once and each rejoins through the running members' own downing of it.
            if (deadNodes.All(n => n.Role.StartsWith("host")))
                await OldIncarnation.RemoveAsync(cluster, deadNodes.Where(n => n.Address is not null).ToDictionary(n => n.Name, n => n.Address!),
                    () => coordinator?.Alive == true, options.Timeout, report, ct);
            // the Coordinator first: the hosts' reports go to its inventory
            foreach (var dead in deadNodes.OrderBy(n => n.Role.StartsWith("host") ? 1 : 0).ToList())
            {
                var isHost = dead.Role.StartsWith("host");
                var started = isHost
                    ? cluster.StartHost(dead.Name, spm: dead.Role.Contains("spm"), rejoin: true)
                    : cluster.StartCoordinator(dead.Name, rejoin: true, replaces: dead.Address);
                nodes[nodes.IndexOf(dead)] = dead with { Pid = started.Pid, StartTime = started.StartTime, Port = started.Port, Address = started.Address ?? dead.Address };
                if (isHost) restartedHosts.Add(dead.Name);
                await State().WriteAsync(ct);
                report?.Invoke($"{dead.Name} was not running (pid {dead.Pid}): started again, pid {started.Pid}, cluster port {started.Port}");
            }
            foreach (var running in previous.Nodes.Where(n => n.Alive))
                report?.Invoke($"{running.Name} runs (pid {running.Pid}): left as it is");
            await WaitUpAsync(cluster, previous.HostIds, previous.Nodes.Count(n => IsCoordinator(n.Name)), options.Timeout, ct, restartedHosts, restartedAt);
        }
        catch (Exception e) when (e is not CliFailure)
        {
            // only what this up started is stopped again; the nodes that ran before it run on
            var tails = LogTails(cluster.LogDirectory);
            await LocalCluster.StopAsync(cluster.Nodes, LocalCluster.StopGrace);
            await State().WriteAsync(CancellationToken.None);
            if (e is OperationCanceledException) throw;
            throw CliFailure.Failed($"{e.Message}; stopped the nodes this up restarted, the others run on\n{tails}");
        }
        cluster.Release();
        return State();
    }

    /// <summary>Stops every node of the state file still running (hosts first), then the VMs under the hosts' run directories.</summary>
    public static async Task<LocalDownResult> DownAsync(string dataDirectory, Action<string>? report = null, CancellationToken ct = default)
    {
        var state = await LocalClusterState.ReadAsync(dataDirectory, ct);
        if (state is null) return new LocalDownResult([], []);
        // In the order they are stopped: the hosts, then the Coordinator (the first seed) last.
        var alive = state.AliveNodes.OrderBy(n => n.Role.StartsWith("host") ? 0 : 1).ToList();
        foreach (var node in alive) report?.Invoke($"stopping {node.Name} (pid {node.Pid})");
        await LocalCluster.StopAsync(alive.Select(n => n.AsProcess()).ToList(), LocalCluster.StopGrace);

        // VMs outlive their host by design, so down ends them itself: QEMU's pid files under each host's run directory.
        var vms = RunningVms(state).ToList();
        foreach (var (pid, file) in vms) report?.Invoke($"stopping VM QEMU pid {pid} ({Path.GetFileNameWithoutExtension(file)})");
        foreach (var (pid, _) in vms) ProcessTable.Signal(pid, ProcessTable.SigTerm);
        var left = await ProcessTable.WaitGoneAsync(vms, v => IsQemu(v.Pid), TimeSpan.FromSeconds(10), ct);
        foreach (var (pid, _) in left) ProcessTable.Signal(pid, ProcessTable.SigKill);
        left = await ProcessTable.WaitGoneAsync(left, v => IsQemu(v.Pid), TimeSpan.FromSeconds(10), ct);
        if (left.Count > 0)
            throw CliFailure.Failed($"QEMU pid(s) {string.Join(", ", left.Select(v => v.Pid))} still run 10 s after SIGKILL");
        // Returns when they are gone from /proc too, so a caller that checks pids finds none (init reaps them soon after they exit).
        await ProcessTable.WaitGoneAsync(alive, n => ProcessTable.IsListed(n.Pid, n.StartTime), TimeSpan.FromSeconds(5), ct);
        await ProcessTable.WaitGoneAsync(vms, v => ProcessTable.IsListed(v.Pid), TimeSpan.FromSeconds(5), ct);
        var stillAlive = state.AliveNodes;
        if (stillAlive.Count > 0)
            throw CliFailure.Failed($"{string.Join(", ", stillAlive.Select(n => $"{n.Name} pid {n.Pid}"))} still run after SIGKILL");
        RemoveSocketFolders(state, report);
        return new LocalDownResult(alive, vms.Select(v => v.Pid).ToList()) { StoppedDomains = await StopLibvirtDomainsAsync(state, report, ct) };
    }

    /// <summary>
    /// The hosts' socket folders outside their data directories (under /run/lsm, see <see cref="Shared.Hosting.SocketFolders"/>):
    /// with the hosts and their VMs gone, they hold only dead sockets, and down leaves nothing of the cluster outside DATA.
    /// </summary>
    private static void RemoveSocketFolders(LocalClusterState state, Action<string>? report)
    {
        foreach (var host in state.Nodes.Where(n => n.Role.StartsWith("host")))
        {
            var folder = Shared.Hosting.SocketFolders.StandIn(LocalCluster.HostRunDirectoryOf(state.DataDirectory, host.Name));
            var info = new DirectoryInfo(folder);
            // never through a symlink planted in its place: only the folder itself, which the host made
            if (!info.Exists || info.LinkTarget is not null) continue;
            try
            {
                info.Delete(recursive: true);
                report?.Invoke($"removed {host.Name}'s socket folder {folder}");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                report?.Invoke($"could not remove {host.Name}'s socket folder {folder}: {e.Message}");
            }
        }
    }

    /// <summary>libvirt hosts' VMs are domains of libvirtd, not pid files of ours: those whose metadata names a host of this cluster are destroyed.</summary>
    private static async Task<IReadOnlyList<string>> StopLibvirtDomainsAsync(LocalClusterState state, Action<string>? report, CancellationToken ct)
    {
        if (state.Hypervisor != "libvirt" || state.LibvirtUri is not { } uri) return [];
        // A libvirtd stopped since up took its transient domains with it: nothing left to stop.
        if (!await LibvirtCheck.AnswersAsync(uri, ct)) return [];
        var owners = state.Nodes.Where(n => n.Role.StartsWith("host")).Select(n => LocalCluster.HostRunDirectoryOf(state.DataDirectory, n.Name)).ToHashSet();
        var domains = await LibvirtCheck.OwnedDomainsAsync(uri, owners, ct);
        foreach (var domain in domains)
        {
            report?.Invoke($"stopping libvirt domain {domain}");
            await LibvirtCheck.DestroyAsync(uri, domain, ct);
        }
        return domains;
    }

    /// <summary>QEMU processes named by pid files under the hosts' run directories (run/vms/VMID.pid) that still run.</summary>
    public static IEnumerable<(int Pid, string PidFile)> RunningVms(LocalClusterState state)
    {
        foreach (var node in state.Nodes.Where(n => n.Role.StartsWith("host")))
        {
            // QmpHypervisor's layout: RUN/vms/VMID.json (manifest) and RUN/vms/VMID.pid (QEMU's -pidfile).
            var vms = Path.Combine(LocalCluster.HostRunDirectoryOf(state.DataDirectory, node.Name), "vms");
            if (!Directory.Exists(vms)) continue;
            foreach (var file in Directory.EnumerateFiles(vms, "*.pid"))
            {
                string text;
                try { text = File.ReadAllText(file).Trim(); }
                catch (IOException) { continue; }
                if (int.TryParse(text, out var pid) && IsQemu(pid)) yield return (pid, file);
            }
        }
    }

    /// <summary>A pid file may outlive its QEMU and the pid be reused: only a live process running qemu counts.</summary>
    private static bool IsQemu(int pid) =>
        ProcessTable.IsAlive(pid) && ProcessTable.CommandLine(pid) is [var program, ..] && Path.GetFileName(program).StartsWith("qemu-system");

    private static Task WaitMemberUpAsync(LocalCluster cluster, NodeProcess node, TimeSpan limit, CancellationToken ct) =>
        PollWhileRunningAsync(cluster, node, limit, $"{node.Name} was not Up", async http =>
        {
            var members = (await http.GetFromJsonAsync<JsonElement>($"{cluster.ApiUrl}/api/cluster", ct)).GetProperty("members").EnumerateArray();
            return members.Any(m => m.GetProperty("address").GetString() == node.Address && m.GetProperty("status").GetString() == "up");
        }, ct);

    /// <summary>
    /// Asks <paramref name="ready"/> every 200 ms until it says yes, while <paramref name="node"/> runs: an API that does not
    /// answer (yet) is asked again; the node's exit or the limit ends the wait with what was waited for.
    /// </summary>
    private static async Task PollWhileRunningAsync(LocalCluster cluster, NodeProcess node, TimeSpan limit, string notReady,
        Func<HttpClient, Task<bool>> ready, CancellationToken ct)
    {
        using var http = cluster.NewApiClient(TimeSpan.FromSeconds(5));
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            if (!node.Running)
                throw new TimeoutException($"{node.Name} (pid {node.Pid}) exited while the cluster came up (log {node.LogPath})");
            try
            {
                if (await ready(http)) return;
            }
            catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException
                                          || e is TaskCanceledException && !ct.IsCancellationRequested) { }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"{notReady} within {limit.TotalSeconds:0} s");
            await Task.Delay(200, ct);
        }
    }

    /// <param name="reportedSince">Hosts that must have reported after <paramref name="since"/> (restarted ones: their report before the crash does not count).</param>
    private static async Task WaitUpAsync(LocalCluster cluster, IReadOnlyList<string> hostIds, int coordinators, TimeSpan limit, CancellationToken ct,
        IReadOnlyCollection<string>? reportedSince = null, DateTimeOffset since = default)
    {
        using var http = cluster.NewApiClient(TimeSpan.FromSeconds(5));
        var deadline = DateTime.UtcNow + limit;
        var waitingFor = "the Coordinator's API";
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var gone = cluster.Nodes.FirstOrDefault(n => !n.Running);
            if (gone is not null)
                throw new TimeoutException($"{gone.Name} (pid {gone.Pid}) exited while the cluster came up (log {gone.LogPath})");
            try
            {
                var members = (await http.GetFromJsonAsync<JsonElement>($"{cluster.ApiUrl}/api/cluster", ct)).GetProperty("members").EnumerateArray().ToList();
                // reachable too: a crashed node's old incarnation stays listed Up, unreachable, until its restart replaces it
                var up = members.Count(m => m.GetProperty("status").GetString() == "up" && m.GetProperty("reachable").GetBoolean());
                waitingFor = $"{hostIds.Count + coordinators} members Up and reachable (now {up} of {members.Count})";
                if (up == hostIds.Count + coordinators && members.Count == hostIds.Count + coordinators)
                {
                    var reported = (await http.GetFromJsonAsync<JsonElement>($"{cluster.ApiUrl}/api/inventory", ct)).GetProperty("hosts").EnumerateArray()
                        .Where(h => reportedSince?.Contains(h.GetProperty("hostId").GetString()!) != true || h.GetProperty("lastReport").GetDateTimeOffset() >= since)
                        .Select(h => h.GetProperty("hostId").GetString()).ToHashSet();
                    var missing = hostIds.Where(h => !reported.Contains(h)).ToList();
                    waitingFor = $"every host in the inventory (missing {string.Join(", ", missing)})";
                    if (missing.Count == 0 && await SilentCoordinatorAsync(http, cluster, ct) is { } silent)
                        waitingFor = $"the API of {silent} (it answers once its journal is warm)";
                    else if (missing.Count == 0) return;
                }
            }
            catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException
                                          || e is TaskCanceledException && !ct.IsCancellationRequested) { }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"the cluster did not come up within {limit.TotalSeconds:0} s: waited for {waitingFor}");
            await Task.Delay(250, ct);
        }
    }

    /// <summary>The first of the other Coordinators whose API does not answer yet, or null when they all do.</summary>
    private static async Task<string?> SilentCoordinatorAsync(HttpClient http, LocalCluster cluster, CancellationToken ct)
    {
        foreach (var name in cluster.CoordinatorNames.Skip(1))
        {
            try
            {
                using var answer = await http.GetAsync($"{cluster.ApiUrlOf(name)}/api/cluster", ct);
                if (!answer.IsSuccessStatusCode) return name;
            }
            catch (HttpRequestException)
            {
                return name;
            }
        }
        return null;
    }

    /// <summary>Until the Coordinator's API answers /api/inventory: it is Up and the inventory singleton recovered from the journal.</summary>
    private static Task WaitInventoryAsync(LocalCluster cluster, NodeProcess coordinator, TimeSpan limit, CancellationToken ct) =>
        PollWhileRunningAsync(cluster, coordinator, limit, $"{coordinator.Name}'s inventory did not answer", async http =>
        {
            using var answer = await http.GetAsync($"{cluster.ApiUrl}/api/inventory", ct);
            return answer.IsSuccessStatusCode;
        }, ct);

    /// <summary>A node of the local cluster that is a Coordinator (coordinator, coordinator-2, …), not a host.</summary>
    public static bool IsCoordinator(string node) =>
        node == LocalCluster.FirstCoordinator || node.StartsWith(LocalCluster.FirstCoordinator + "-", StringComparison.Ordinal);

    /// <summary>Why several Coordinators need PostgreSQL: what --coordinators N with the SQLite journal is refused with.</summary>
    public static string CoordinatorsNeedPostgres(int coordinators) =>
        $"--coordinators {coordinators} needs --journal postgres://USER:PASSWORD@HOST:PORT/DB: the Coordinators share one journal " +
        "(a saga moves to another Coordinator when its own dies), and SQLite's files are each one Coordinator's, not shared";

    /// <summary>The last lines of every node's log, for the operator to see why it did not come up.</summary>
    public static string LogTails(string logDirectory, int lines = 20)
    {
        if (!Directory.Exists(logDirectory)) return "(no logs)";
        return string.Join("\n", Directory.GetFiles(logDirectory, "*.log").Order().Select(f =>
        {
            using var stream = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var reader = new StreamReader(stream);
            var all = reader.ReadToEnd().TrimEnd().Split('\n');
            // A crash's stack is longer than the tail: its first line (what failed) is shown above it.
            var crash = Array.FindLastIndex(all, l => l.StartsWith("Unhandled exception.", StringComparison.Ordinal));
            var header = crash >= 0 && crash < all.Length - lines ? $"{all[crash]}\n   ...\n" : "";
            return $"--- {f} (last {lines} lines)\n{header}{string.Join('\n', all.TakeLast(lines))}";
        }));
    }

    /// <summary>
    /// DATA/api-token (0600), made on the first up and kept: the Coordinator reads its API token there, and lsm finds it
    /// through the Coordinator's --api-token-file. DATA/viewer-token (0600) beside it: the viewer's token (reads only). None when the environment allows crash injection (test clusters):
    /// a Coordinator with a token refuses a crash plan, so such a cluster keeps the tokenless loopback API.
    /// </summary>
    private static string? ApiTokenFileFor(string dataDirectory)
    {
        if (Environment.GetEnvironmentVariable(Shared.Hosting.FaultPlan.PlanVariable) is { Length: > 0 }
            && Environment.GetEnvironmentVariable(Shared.Hosting.FaultPlan.AllowVariable) == "1")
            return null;
        var path = Path.Combine(dataDirectory, Shared.Hosting.ApiTokenFile.FileName);
        try
        {
            Shared.Hosting.ApiTokenFile.ReadOrCreate(path);
            Shared.Hosting.ApiTokenFile.ReadOrCreate(Path.Combine(dataDirectory, Shared.Hosting.ApiTokenFile.ViewerFileName));
        }
        catch (ArgumentException e)
        {
            throw CliFailure.BadUsage(e.Message);
        }
        return path;
    }

    /// <summary>DATA/tls with the cluster's CA (made on the first up); unreadable CA files stop the up before any node starts.</summary>
    private static Tls.CertificateFolder OpenTls(string dataDirectory)
    {
        var folder = Path.Combine(dataDirectory, Tls.CertificateFolder.LocalFolderName);
        try
        {
            return Tls.CertificateFolder.OpenOrCreate(folder, $"lsm local cluster CA ({Environment.MachineName}:{folder})");
        }
        catch (Exception e) when (e is ArgumentException or System.Security.Cryptography.CryptographicException)
        {
            throw CliFailure.Failed($"{e.Message}; move {folder} away to have a new CA made (every node then gets a new certificate)");
        }
    }

    /// <summary>The <c>--storage-root</c> folders, absolute; each must exist (the operator's storage, not made up here).</summary>
    private static IReadOnlyList<string> CheckedStorageRoots(IReadOnlyList<string> roots)
    {
        var absolute = roots.Select(Path.GetFullPath).Distinct().ToList();
        foreach (var root in absolute)
        {
            if (root.Contains(','))
                throw CliFailure.BadUsage($"--storage-root {root}: a folder whose path holds a comma cannot be passed to the hosts");
            if (!Directory.Exists(root))
                throw CliFailure.BadUsage($"--storage-root {root} does not exist: make the folder (the storage the domains go on) first");
        }
        return absolute;
    }

    /// <summary>Null for SQLite; else an Npgsql connection string (a postgres:// URI is turned into one).</summary>
    public static string? PostgresConnection(string journal)
    {
        if (journal.Equals("sqlite", StringComparison.OrdinalIgnoreCase)) return null;
        if (Uri.TryCreate(journal, UriKind.Absolute, out var uri) && uri.Scheme is "postgres" or "postgresql")
        {
            var database = uri.AbsolutePath.Trim('/');
            if (uri.Host.Length == 0 || database.Length == 0)
                throw CliFailure.BadUsage($"--journal {Redacted(journal)}: name the host and the database, e.g. postgres://lsm:secret@127.0.0.1:5432/lsm");
            var parts = new List<string> { $"Host={uri.Host}", $"Port={(uri.IsDefaultPort || uri.Port < 0 ? 5432 : uri.Port)}", $"Database={Uri.UnescapeDataString(database)}" };
            var user = uri.UserInfo.Split(':', 2);
            if (user[0].Length > 0) parts.Add($"Username={Uri.UnescapeDataString(user[0])}");
            if (user.Length == 2) parts.Add($"Password={Uri.UnescapeDataString(user[1])}");
            parts.AddRange(uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries).Select(Uri.UnescapeDataString));
            return string.Join(";", parts);
        }
        if (journal.Contains("Host=", StringComparison.OrdinalIgnoreCase)) return journal;
        throw CliFailure.BadUsage($"--journal '{Redacted(journal)}' is not sqlite, a postgres:// URI or an Npgsql connection string (Host=...;Database=...)");
    }

    /// <summary>The journal as the state file shows it: never the password.</summary>
    private static string JournalLabel(string journal) => PostgresConnection(journal) is null ? "sqlite" : $"postgres ({Redacted(journal)})";

    private static string Redacted(string journal) =>
        Uri.TryCreate(journal, UriKind.Absolute, out var uri) && uri.UserInfo.Contains(':')
            ? journal.Replace(uri.UserInfo, uri.UserInfo.Split(':')[0] + ":***")
            : System.Text.RegularExpressions.Regex.Replace(journal, "(?i)(password|pwd)=[^;]*", "$1=***");

    private static FileStream TakeLock(string dataDirectory)
    {
        var path = Path.Combine(dataDirectory, "local.lock");
        try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose); }
        catch (IOException)
        {
            throw CliFailure.BadUsage($"another lsm local up is starting a cluster in {dataDirectory} right now ({path} is locked)");
        }
    }

    private static bool PortIsFree(int port)
    {
        try
        {
            using var listener = new TcpListener(System.Net.IPAddress.Loopback, port);
            listener.Start();
            return true;
        }
        catch (SocketException) { return false; }
    }

}
