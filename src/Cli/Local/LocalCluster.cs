using System.Diagnostics;
using System.Net.Sockets;

namespace LiveMigration.Cli.Local;

/// <summary>
/// One process of a local cluster: its name, pid, start time (so a reused pid is not taken for it) and log file.
/// <see cref="Child"/> is the <see cref="Process"/> when this process started it; a node read back from the
/// state file has none and is found by pid alone.
/// </summary>
public sealed record NodeProcess(string Name, int Pid, long StartTime, string LogPath, IReadOnlyList<string> Arguments)
{
    internal Process? Child { get; init; }

    /// <summary>The cluster port it listens on (0: picked by the node at start, so unknown here).</summary>
    public int Port => Arguments.SkipWhile(a => a != "--port").Skip(1).Select(p => int.TryParse(p, out var n) ? n : 0).FirstOrDefault();

    /// <summary>The address its cluster remoting listens on and is known by (<c>--hostname</c>; loopback unless a test set one).</summary>
    public string Hostname => Arguments.SkipWhile(a => a != "--hostname").Skip(1).FirstOrDefault() ?? LocalCluster.DefaultHostname;

    public string? Address => Port > 0 ? Shared.Hosting.ClusterNodeSettings.AddressOf(Hostname, Port, tls: Arguments.Contains("--tls-certificate")) : null;

    public bool Running => ProcessTable.IsAlive(Pid, StartTime);
}

/// <summary>
/// Starts Coordinator and HostNode processes on loopback from the repository's build output and stops them by pid.
/// Every node runs detached, in a session of its own with its output in a log file under DATA/logs and no stdio
/// of ours, so it outlives the process that started it (<c>lsm local up</c> returns; a test's pipes are not held).
/// </summary>
public sealed class LocalCluster : IAsyncDisposable
{
    /// <summary>How long a node gets to run its coordinated shutdown after SIGTERM before it is SIGKILLed.</summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(10);

    private readonly List<NodeProcess> _nodes = [];
    private readonly Dictionary<string, int> _hostPorts = new();
    private readonly Dictionary<string, CoordinatorPorts> _moreCoordinators = new();
    private readonly string _configuration;
    private int _coordinatorPort;

    public LocalCluster(string dataDirectory, string? configuration = null)
    {
        DataDirectory = Path.GetFullPath(dataDirectory);
        RepositoryRoot = FindRepositoryRoot();
        _configuration = configuration ?? (AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}") ? "Release" : "Debug");
        CoordinatorPort = FreePort();
        HttpPort = FreePort(CoordinatorPort);
    }

    public string DataDirectory { get; }
    public string RepositoryRoot { get; }

    /// <summary>The Coordinator's cluster port: a free one unless set (a cluster brought back from its state file keeps its ports).</summary>
    public int CoordinatorPort { get => _coordinatorPort; init => _coordinatorPort = value; }

    /// <summary>
    /// The Coordinators besides the first (<see cref="FirstCoordinator"/>), by name (<see cref="CoordinatorName"/>): each
    /// with its cluster port and HTTP port. Every one of them is a seed after the first, before the seed hosts.
    /// </summary>
    public IReadOnlyDictionary<string, CoordinatorPorts> MoreCoordinators
    {
        get => _moreCoordinators;
        init
        {
            foreach (var (name, ports) in value) _moreCoordinators[name] = ports;
        }
    }

    /// <summary>The first Coordinator's node name; the others are coordinator-2, coordinator-3, ….</summary>
    public const string FirstCoordinator = "coordinator";

    /// <summary>The node name of the <paramref name="number"/>th Coordinator (1-based).</summary>
    public static string CoordinatorName(int number) => number == 1 ? FirstCoordinator : $"{FirstCoordinator}-{number}";

    /// <summary>Every Coordinator's name, the first first.</summary>
    public IReadOnlyList<string> CoordinatorNames => [FirstCoordinator, .. _moreCoordinators.Keys.OrderBy(CoordinatorNumber)];

    private static int CoordinatorNumber(string name) => int.TryParse(name.AsSpan(FirstCoordinator.Length).TrimStart('-'), out var n) ? n : 1;

    /// <summary>The cluster port of a Coordinator (the first's, or one of <see cref="MoreCoordinators"/>).</summary>
    public int CoordinatorPortOf(string name) => _moreCoordinators.TryGetValue(name, out var ports) ? ports.Port : CoordinatorPort;

    /// <summary>The HTTP API of a Coordinator (the first's is <see cref="ApiUrl"/>).</summary>
    public string ApiUrlOf(string name) => _moreCoordinators.TryGetValue(name, out var ports) ? $"http://127.0.0.1:{ports.HttpPort}" : ApiUrl;

    /// <summary>The seed hosts' fixed ports as a state file recorded them, so restarted nodes listen where the others' seed lists say.</summary>
    public IReadOnlyDictionary<string, int> KnownHostPorts
    {
        init
        {
            foreach (var (host, port) in value) _hostPorts[host] = port;
        }
    }

    /// <summary>The Coordinator's HTTP port: a free one unless set (<c>lsm local up</c> uses 9110, the CLI's default API).</summary>
    public int HttpPort { get; init; }

    /// <summary>
    /// Every node's seed list: the Coordinator first, then the <see cref="SeedHosts"/>. A restarted Coordinator
    /// (the first seed) asks the other seeds before it forms a cluster of its own, so it rejoins the hosts
    /// instead of splitting from them; a restarted host seed rejoins through the others.
    /// </summary>
    public string Seed => string.Join(",", CoordinatorNames.Select(c => NodeAddress(c, CoordinatorPortOf(c))).Concat(SeedHosts.Select(h => NodeAddress(h, HostPort(h)))));
    public string ApiUrl => $"http://127.0.0.1:{HttpPort}";
    public string DomainRoot => DomainRootOf(DataDirectory);
    public string LogDirectory => Path.Combine(DataDirectory, "logs");
    /// <summary>
    /// The pool's SPM lease (DESIGN §7a): in the domain root, the shared storage every host of the local cluster
    /// mounts at the same path, so all SPM-capable hosts read and write the same record.
    /// </summary>
    public string SpmLeasePath => Path.Combine(DomainRoot, "spm.lease");
    public IReadOnlyList<NodeProcess> Nodes => _nodes;
    public string HostDataDirectory(string hostId) => Path.Combine(DataDirectory, hostId);
    public string HostRunDirectory(string hostId) => HostRunDirectoryOf(DataDirectory, hostId);

    /// <summary>The layout of a data directory, for whoever prepares domains or VMs before the nodes start.</summary>
    public static string DomainRootOf(string dataDirectory) => Path.Combine(Path.GetFullPath(dataDirectory), "domains");

    /// <summary>Where a host's QEMU manifests and pid files live (its run/vms); a VM started here is adopted by that host.</summary>
    public static string HostRunDirectoryOf(string dataDirectory, string hostId) => Path.Combine(Path.GetFullPath(dataDirectory), hostId, "run");

    /// <summary>
    /// Hosts that listen on a fixed port and act as seed nodes beside the Coordinator. With the Coordinator
    /// as the only seed, a Coordinator killed and restarted joins itself and forms a second cluster without
    /// the hosts; list the hosts here whenever a node may be restarted.
    /// </summary>
    public IReadOnlyList<string> SeedHosts { get; init; } = [];

    /// <summary>Extra HOCON passed to every node (tests use fast cluster timings).</summary>
    public string? ExtraHocon { get; init; }

    public const string DefaultHostname = "127.0.0.1";

    /// <summary>
    /// For the network-partition tests: the address a node's cluster remoting listens on and is known by, per node name
    /// (the others: loopback). A node in a network namespace of its own cannot reach the root namespace's loopback, so
    /// every node of such a cluster gets an address on the test's veth links.
    /// </summary>
    public IReadOnlyDictionary<string, string> NodeHostnames { get; init; } = new Dictionary<string, string>();

    /// <summary>For the network-partition tests: nodes started in a network namespace (<c>ip netns exec NS</c>), per node name.</summary>
    public IReadOnlyDictionary<string, string> NodeNetworkNamespaces { get; init; } = new Dictionary<string, string>();

    public string HostnameOf(string node) => NodeHostnames.TryGetValue(node, out var hostname) ? hostname : DefaultHostname;

    private string NodeAddress(string node, int port) => Shared.Hosting.ClusterNodeSettings.AddressOf(HostnameOf(node), port, tls: Tls is not null);

    /// <summary>
    /// The cluster's CA and node certificates: every node runs mutual TLS with its own certificate (<c>lsm local up</c>);
    /// null: plain remoting on loopback, as the test clusters built directly on this class run.
    /// </summary>
    public Tls.CertificateFolder? Tls { get; init; }

    private IReadOnlyList<string> TlsArguments(string node) => Tls?.ArgumentsFor(node, HostnameOf(node)) ?? [];

    /// <summary>The <c>--hostname</c> switch of a node with an address of its own; none for loopback (the nodes' default).</summary>
    private IReadOnlyList<string> HostnameArguments(string node) => NodeHostnames.ContainsKey(node) ? ["--hostname", HostnameOf(node)] : [];

    /// <summary>
    /// The file (0600) the Coordinator reads its API token from (<c>--api-token-file</c>; the token itself never goes on
    /// a command line); null: no token, the API answers loopback only.
    /// </summary>
    public string? ApiTokenFile { get; init; }

    /// <summary>The viewer's token file beside <see cref="ApiTokenFile"/>, when it is there (a cluster made before viewers has none).</summary>
    public string? ViewerTokenFile =>
        ApiTokenFile is { } file && Path.Combine(Path.GetDirectoryName(file)!, Shared.Hosting.ApiTokenFile.ViewerFileName) is var viewer && File.Exists(viewer)
            ? viewer
            : null;

    /// <summary>An HTTP client for the Coordinator's API that carries the token when there is one.</summary>
    public HttpClient NewApiClient(TimeSpan timeout)
    {
        var http = new HttpClient { Timeout = timeout };
        if (ApiTokenFile is { } file)
            http.DefaultRequestHeaders.Authorization = new("Bearer", Shared.Hosting.ApiTokenFile.Read(file));
        return http;
    }

    /// <summary>The Coordinator's journal in PostgreSQL (an Npgsql connection string); null: SQLite under its data directory.</summary>
    public string? PostgresConnectionString { get; init; }

    /// <summary>The Coordinators' admission limits (<c>--max-per-host</c>, <c>--max-per-domain</c>; 0 = none); null = their default.</summary>
    public int? MaxPerHost { get; init; }
    public int? MaxPerDomain { get; init; }

    /// <param name="rejoin">The cluster runs on without it (it crashed): its own address goes last in its seed list, so it joins the
    /// running members rather than forming a cluster of its own.</param>
    /// <param name="replaces">The address of its crashed incarnation, when it comes back on another port: it downs that member itself
    /// (<c>--replaces</c>). Only for a predecessor whose process is verifiably gone.</param>
    public NodeProcess StartCoordinator(string name = FirstCoordinator, bool rejoin = false, string? replaces = null) =>
        Start(name, "Coordinator", "LiveMigration.Coordinator.dll",
        [
            "--port", CoordinatorPortOf(name).ToString(), "--seed", rejoin ? RejoinSeed(name) : Seed, "--http", ApiUrlOf(name),
            .. replaces is null ? Array.Empty<string>() : ["--replaces", replaces],
            "--data-dir", Path.Combine(DataDirectory, name), .. HostnameArguments(name), .. TlsArguments(name),
            .. ApiTokenFile is { } tokenFile ? new[] { "--api-token-file", tokenFile } : [],
            .. ViewerTokenFile is { } viewerFile ? new[] { "--viewer-token-file", viewerFile } : [],
            .. MaxPerHost is { } perHost ? new[] { "--max-per-host", perHost.ToString() } : [],
            .. MaxPerDomain is { } perDomain ? new[] { "--max-per-domain", perDomain.ToString() } : [],
        ], PostgresConnectionString is { } pg
            // The same setting as the Coordinator's --postgres switch, through its environment: a password on the
            // command line would be readable by every user in /proc/PID/cmdline.
            ? new Dictionary<string, string> { ["LSM_Coordinator__PostgresConnectionString"] = pg }
            : null);

    /// <summary>
    /// Folders besides <see cref="DomainRoot"/> where the hosts allow storage domains to be created (<c>lsm domain create
    /// --path</c>); a host refuses any path outside <see cref="DomainRoot"/> and these.
    /// </summary>
    public IReadOnlyList<string> StorageRoots { get; init; } = [];

    /// <summary>The roots every host allows: the domain root and <see cref="StorageRoots"/>, absolute.</summary>
    public IReadOnlyList<string> AllowedStorageRoots => new[] { DomainRoot }.Concat(StorageRoots.Select(Path.GetFullPath)).Distinct().ToList();

    /// <summary>
    /// HostNode switches passed to every host after the ones this class sets, e.g. <c>--hypervisor libvirt</c>
    /// (<see cref="LocalClusterOptions.HostArguments"/>); a restarted host keeps them.
    /// </summary>
    public IReadOnlyList<string> HostArguments { get; init; } = [];

    /// <summary>
    /// A host's HostNode with this cluster's <see cref="HostArguments"/>, then <paramref name="extraArguments"/>
    /// (this host only; a later switch of the same name wins, as in the HostNode's configuration).
    /// </summary>
    public NodeProcess StartHost(string hostId, bool spm, IReadOnlyList<string>? extraArguments = null, bool rejoin = false) =>
        Start(hostId, "HostNode", "LiveMigration.HostNode.dll",
        [
            "--host-id", hostId, "--port", SeedHosts.Contains(hostId) ? HostPort(hostId).ToString() : "0", "--seed", rejoin ? RejoinSeed(hostId) : Seed,
            "--roles", spm ? "host,spm" : "host",
            "--data-dir", HostDataDirectory(hostId), "--domain-root", DomainRoot,
            "--allowed-storage-roots", string.Join(",", AllowedStorageRoots), .. HostnameArguments(hostId), .. TlsArguments(hostId),
            .. spm ? new[] { "--spm-lease", SpmLeasePath } : [],
            .. HostArguments, .. extraArguments ?? [],
        ]);

    /// <summary>
    /// The seed list of a node that comes back to a running cluster: the first seed of a list forms a new cluster when no
    /// other seed answers within seed-node-timeout, so the node's own address goes last.
    /// </summary>
    private string RejoinSeed(string name)
    {
        var self = name.StartsWith("host")
            ? SeedHosts.Contains(name) ? NodeAddress(name, HostPort(name)) : null
            : NodeAddress(name, CoordinatorPortOf(name));
        var listed = Seed.Split(',');
        return string.Join(",", self is null ? listed : listed.Where(s => s != self).Append(self));
    }

    /// <summary>The fixed port of a seed host, picked once so a restart listens where the seed list says.</summary>
    private int HostPort(string hostId)
    {
        lock (_hostPorts)
        {
            if (_hostPorts.TryGetValue(hostId, out var port)) return port;
            port = FreePort([.. TakenPorts, .. _hostPorts.Values]);
            return _hostPorts[hostId] = port;
        }
    }

    /// <summary>The Coordinators' cluster and HTTP ports, which no other node may be given.</summary>
    private int[] TakenPorts => [CoordinatorPort, HttpPort, .. _moreCoordinators.Values.SelectMany(p => new[] { p.Port, p.HttpPort })];

    /// <summary>Where the built dll is: this build's configuration first, else the other one.</summary>
    private string DllPath(string project, string dll)
    {
        var candidates = new[] { _configuration, _configuration == "Release" ? "Debug" : "Release" }
            .Select(c => Path.Combine(RepositoryRoot, "src", project, "bin", c, "net10.0", dll)).ToList();
        return candidates.FirstOrDefault(File.Exists)
               ?? throw new FileNotFoundException($"{candidates[0]} is not built; run `dotnet build -c {_configuration}` at {RepositoryRoot} (./run.sh demo builds it too)");
    }

    /// <summary>
    /// Starts a node through <c>sh</c> and <c>setsid</c>: the shell points stdin at /dev/null and stdout/stderr at
    /// the log file, then execs setsid, which execs dotnet, so the pid we get is the node's own and it holds no
    /// stdio of ours. The script is fixed; the log path and the node's arguments are passed as its arguments.
    /// A node with a network namespace goes through <c>ip netns exec</c>, which execs too: the pid stays the node's.
    /// </summary>
    private NodeProcess Start(string name, string project, string dll, IReadOnlyList<string> arguments, IReadOnlyDictionary<string, string>? environment = null)
    {
        var path = DllPath(project, dll);
        var log = Path.Combine(LogDirectory, $"{name}.log");
        Directory.CreateDirectory(LogDirectory);
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, WorkingDirectory = DataDirectory };
        foreach (var a in new[] { "-c", "log=\"$1\"; shift; exec setsid \"$@\" </dev/null >>\"$log\" 2>&1", "lsm-node", log })
            psi.ArgumentList.Add(a);
        if (NodeNetworkNamespaces.TryGetValue(name, out var networkNamespace))
            foreach (var a in new[] { "ip", "netns", "exec", networkNamespace }) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("dotnet");
        psi.ArgumentList.Add(path);
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        if (ExtraHocon is { } hocon) psi.Environment["LSM_Cluster__ExtraHocon"] = hocon;
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) psi.Environment[key] = value;
        var process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {name}");
        var node = new NodeProcess(name, process.Id, ProcessTable.StartTime(process.Id) ?? 0, log, arguments) { Child = process };
        _nodes.Add(node);
        return node;
    }

    /// <summary>SIGKILL, as a crash: no shutdown, no leave.</summary>
    public async Task KillAsync(NodeProcess node)
    {
        ProcessTable.Signal(node.Pid, ProcessTable.SigKill);
        await WaitExitAsync(node, TimeSpan.FromSeconds(10));
        _nodes.Remove(node);
    }

    /// <summary>
    /// Starts a stopped or crashed node again with its data directory, on a fresh cluster port, downing its old incarnation
    /// itself (<c>--replaces</c>), as <c>lsm local up</c> does for a Coordinator: back on its old address it could meet a
    /// peer's redial of the old incarnation in flight, which Akka.Remote leaves a connection nobody writes on
    /// (PredecessorDowning and OldIncarnation say more; CI saw a host and a Coordinator restarted on their old ports never
    /// rejoin). Later seed lists name the new port. A Coordinator back this way joins while its predecessor is still a
    /// (downed) member, so its singletons start only after the removal margin (the resolver's stable-after, 20 s).
    /// </summary>
    public async Task<NodeProcess> RestartAsync(NodeProcess node)
    {
        if (node.Running) await KillAsync(node);
        _nodes.Remove(node);
        var isHost = node.Name.StartsWith("host");
        var arguments = node.Arguments.ToList();
        // a node restarted twice replaces its latest incarnation only
        var replaces = arguments.IndexOf("--replaces");
        if (replaces >= 0) arguments.RemoveRange(replaces, 2);
        var portAt = arguments.IndexOf("--port");
        if (node.Address is { } oldAddress && portAt >= 0)
        {
            var port = FreePort([.. TakenPorts, node.Port, .. _hostPorts.Values]);
            arguments[portAt + 1] = port.ToString();
            if (!isHost && _moreCoordinators.TryGetValue(node.Name, out var ports)) _moreCoordinators[node.Name] = ports with { Port = port };
            else if (!isHost) _coordinatorPort = port;
            else lock (_hostPorts) if (_hostPorts.ContainsKey(node.Name)) _hostPorts[node.Name] = port;
            arguments.AddRange(["--replaces", oldAddress]);
        }
        var at = arguments.IndexOf("--seed");
        if (at >= 0) arguments[at + 1] = RejoinSeed(node.Name);
        var dll = isHost ? ("HostNode", "LiveMigration.HostNode.dll") : ("Coordinator", "LiveMigration.Coordinator.dll");
        return Start(node.Name, dll.Item1, dll.Item2, arguments, isHost || PostgresConnectionString is not { } pg
            ? null
            : new Dictionary<string, string> { ["LSM_Coordinator__PostgresConnectionString"] = pg });
    }

    /// <summary>
    /// Stops nodes by pid: the hosts first, then the rest (the seed last), each group with SIGTERM (their
    /// coordinated shutdown: leave, hand over singletons), SIGKILL for any still there after <paramref name="grace"/>.
    /// Works on nodes read back from a state file as well as on ones this process started.
    /// </summary>
    public static async Task StopAsync(IReadOnlyList<NodeProcess> nodes, TimeSpan grace)
    {
        foreach (var group in new[] { nodes.Where(n => n.Name.StartsWith("host")).ToList(), nodes.Where(n => !n.Name.StartsWith("host")).ToList() })
        {
            foreach (var node in group.Where(n => n.Running)) ProcessTable.Signal(node.Pid, ProcessTable.SigTerm);
            var left = await ProcessTable.WaitGoneAsync(group, n => n.Running, grace);
            foreach (var node in left) ProcessTable.Signal(node.Pid, ProcessTable.SigKill);
            await Task.WhenAll(group.Select(n => WaitExitAsync(n, TimeSpan.FromSeconds(10))));
        }
    }

    private static async Task WaitExitAsync(NodeProcess node, TimeSpan limit)
    {
        using var timeout = new CancellationTokenSource(limit);
        try
        {
            // Our own child is reaped through its Process; another's is watched in /proc.
            if (node.Child is { } child) await child.WaitForExitAsync(timeout.Token);
            else await ProcessTable.WaitGoneAsync([node], n => n.Running, limit);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{node.Name} (pid {node.Pid}) did not exit within {limit.TotalSeconds:0} s of SIGKILL");
        }
    }

    /// <summary>Lets the nodes run on without this object (lsm local up returns; down finds them by pid).</summary>
    public void Release()
    {
        foreach (var node in _nodes) node.Child?.Dispose();
        _nodes.Clear();
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(_nodes.ToList(), StopGrace);
        foreach (var node in _nodes) node.Child?.Dispose();
        _nodes.Clear();
    }

    /// <summary>
    /// A loopback port free right now and none of <paramref name="taken"/>: each probe releases its port at once, so
    /// the kernel may hand the same one to the next probe (a Coordinator once got one port for its cluster and its API,
    /// and could not bind the second).
    /// </summary>
    public static int FreePort(params int[] taken)
    {
        while (true)
        {
            using var listener = new TcpListener(System.Net.IPAddress.Loopback, 0);
            listener.Start();
            var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
            if (!taken.Contains(port)) return port;
        }
    }

    /// <summary>The directory holding LiveMigration.Akka.sln above this build's output (scripts such as deploy/libvirt/setup.sh are found from it).</summary>
    public static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "LiveMigration.Akka.sln"))) return dir.FullName;
        throw new InvalidOperationException("cannot find LiveMigration.Akka.sln above " + AppContext.BaseDirectory);
    }
}

/// <summary>A Coordinator's two ports on loopback: its cluster remoting and its HTTP API.</summary>
public sealed record CoordinatorPorts(int Port, int HttpPort);
