using System.ComponentModel;
using LiveMigration.Cli.Api;
using LiveMigration.Cli.Local;
using LiveMigration.Shared.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>What every <c>lsm local</c> command takes: where the local cluster keeps its data and state file.</summary>
public class LocalSettings : CommandSettings
{
    [CommandOption("--data-dir <DIR>")]
    [Description("The local cluster's directory: domains, node data, logs and its state file local.json (default: ./var/local). Example: --data-dir /tmp/lsm")]
    public string? DataDir { get; set; }

    [CommandOption("--json")]
    [Description("Print JSON (stable field names, for scripts) instead of tables")]
    public bool Json { get; set; }

    public string DataDirectory => DataDir is { Length: > 0 } dir ? Path.GetFullPath(dir) : LocalClusterLauncher.DefaultDataDirectory;
}

public sealed class LocalUpSettings : LocalSettings
{
    [CommandOption("--hosts <N>")]
    [Description("How many HostNode processes: host-1 (SPM-capable) … host-N. Default 2")]
    [DefaultValue(2)]
    public int Hosts { get; set; } = 2;

    [CommandOption("--spm-hosts <N>")]
    [Description("How many hosts may hold the SPM role (host-1 … host-N), each fenced by the pool's lease DATA/domains/spm.lease: " +
                 "with 2 or more the SPM moves to another host when its host fails. Default 1")]
    [DefaultValue(1)]
    public int SpmHosts { get; set; } = 1;

    [CommandOption("--coordinators <N>")]
    [Description("How many Coordinators: coordinator (API on --api-port), coordinator-2 … (APIs on the ports after it). They share the " +
                 "migrations through cluster sharding, and a dead one's migrations go on on the others. 2 or more need --journal postgres://... Default 1")]
    [DefaultValue(1)]
    public int Coordinators { get; set; } = 1;

    [CommandOption("--journal <JOURNAL>")]
    [Description("The Coordinator's journal: sqlite (files under DATA/coordinator; the default) or postgres://user:password@host:5432/db. " +
                 "A cluster in DATA that ran on PostgreSQL is brought back only with its --journal given again")]
    public string? Journal { get; set; }

    [CommandOption("--max-per-host <N>")]
    [Description("The Coordinators' admission limit: migrations running at once per host (of the VM); more wait as Queued. 0 = no limit. " +
                 "Default: the Coordinator's (2)")]
    public int? MaxPerHost { get; set; }

    [CommandOption("--max-per-domain <N>")]
    [Description("The Coordinators' admission limit: migrations running at once per storage domain (source or destination). 0 = no limit. " +
                 "Default: the Coordinator's (4)")]
    public int? MaxPerDomain { get; set; }

    [CommandOption("--spm-max-copies <N>")]
    [Description("The SPM's bound on migration steps copying data at once; more wait their turn, running. 0 = no bound. " +
                 "Default: the host's (10)")]
    public int? SpmMaxCopies { get; set; }

    [CommandOption("--api-port <PORT>")]
    [Description("The Coordinator's HTTP port on 127.0.0.1 (default: the one the cluster in DATA ran with, else 9110, where lsm looks " +
                 "without --api; 0 = any free port)")]
    public int? ApiPort { get; set; }

    [CommandOption("--timeout <SECONDS>")]
    [Description("How long the cluster gets to come up before up stops it again and exits 1. Default 120")]
    [DefaultValue(120)]
    public int TimeoutSeconds { get; set; } = 120;

    [CommandOption("--hypervisor <ADAPTER>")]
    [Description("How every host runs its VMs: qmp (QEMU's monitor; the default), libvirt (through the libvirtd of this machine, which must answer " +
                 "`virsh -c qemu:///system version`: deploy/libvirt/setup.sh starts one) or sim (in-memory VMs and domains, all hosts in one " +
                 "process: for trying scale, nothing they hold survives a down). Default: the one the cluster in DATA ran with, else qmp. " +
                 "Example: --hypervisor libvirt")]
    public string? Hypervisor { get; set; }

    [CommandOption("--sim-copy-rate <RATE>")]
    [Description("With --hypervisor sim: how fast the sim hosts' copies and mirrors run, e.g. 64MiB/s; 0 (the default) makes them instant. " +
                 "The sim hosts' disks are sizes, not data: a new disk holds none until a test says so")]
    [DefaultValue("0")]
    public string SimCopyRate { get; set; } = "0";

    [CommandOption("--libvirt-uri <URI>")]
    [Description("The libvirt connection of the hosts with --hypervisor libvirt. Default: the one the cluster in DATA ran with, else qemu:///system")]
    public string? LibvirtUri { get; set; }

    [CommandOption("--storage-root <DIR>")]
    [Description("A folder, besides DATA/domains, where lsm domain create --path may put storage domains; repeatable. The hosts refuse any " +
                 "other path (after following .. and symlinks). Example: --storage-root /srv/lsm")]
    public string[] StorageRoots { get; set; } = [];

    /// <summary>Each libvirt VM drive exported over NBD for a stand-in guest: tests only (it taints the domain).</summary>
    [CommandOption("--libvirt-guest-export", IsHidden = true)]
    public bool LibvirtGuestExport { get; set; }

    /// <summary>Sub-second cluster timings, for the test suite only: an operator's cluster keeps Akka's defaults.</summary>
    [CommandOption("--fast-timings", IsHidden = true)]
    public bool FastTimings { get; set; }

    /// <summary>Network-partition tests only: NODE=ADDRESS, the cluster address of a node (coordinator, host-1, …) on the test's veth links.</summary>
    [CommandOption("--node-hostname <NODE=ADDRESS>", IsHidden = true)]
    public string[] NodeHostnames { get; set; } = [];

    /// <summary>Network-partition tests only: NODE=NAMESPACE, a node started in a network namespace the test made (<c>ip netns exec</c>).</summary>
    [CommandOption("--node-netns <NODE=NAMESPACE>", IsHidden = true)]
    public string[] NodeNetworkNamespaces { get; set; } = [];

    /// <summary>NODE=VALUE pairs by node; a node given twice keeps its last value, as with any repeated switch.</summary>
    public static Dictionary<string, string> Pairs(IEnumerable<string> pairs)
    {
        var byNode = new Dictionary<string, string>();
        foreach (var pair in pairs.Select(p => p.Split('=', 2))) byNode[pair[0]] = pair.Length == 2 ? pair[1] : "";
        return byNode;
    }

    public override ValidationResult Validate()
    {
        foreach (var pair in NodeHostnames.Concat(NodeNetworkNamespaces))
            if (pair.Split('=', 2) is not [var node, { Length: > 0 }] || node != "coordinator" && !node.StartsWith("host-", StringComparison.Ordinal))
                return ValidationResult.Error($"'{pair}' is not NODE=VALUE with NODE coordinator or host-N");
        foreach (var (node, address) in Pairs(NodeHostnames))
            if (!System.Net.IPAddress.TryParse(address, out _))
                return ValidationResult.Error($"--node-hostname {node}={address}: not an IP address");
        foreach (var (node, name) in Pairs(NodeNetworkNamespaces))
            if (!name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                return ValidationResult.Error($"--node-netns {node}={name}: not a network namespace name");
        if (Hosts is < 1 or > 16) return ValidationResult.Error($"--hosts must be 1 to 16, got {Hosts}");
        if (Coordinators is < 1 or > LocalClusterOptions.MaxCoordinators)
            return ValidationResult.Error($"--coordinators must be 1 to {LocalClusterOptions.MaxCoordinators}, got {Coordinators}");
        if (Coordinators > 1 && (Journal ?? "sqlite").Equals("sqlite", StringComparison.OrdinalIgnoreCase))
            return ValidationResult.Error(LocalClusterLauncher.CoordinatorsNeedPostgres(Coordinators));
        if (SpmHosts < 1 || SpmHosts > Hosts) return ValidationResult.Error($"--spm-hosts must be 1 to --hosts ({Hosts}), got {SpmHosts}");
        if (MaxPerHost is < 0 or > 1000) return ValidationResult.Error($"--max-per-host must be 0 (no limit) to 1000, got {MaxPerHost}");
        if (MaxPerDomain is < 0 or > 1000) return ValidationResult.Error($"--max-per-domain must be 0 (no limit) to 1000, got {MaxPerDomain}");
        if (SpmMaxCopies is < 0 or > 10_000) return ValidationResult.Error($"--spm-max-copies must be 0 (no bound) to 10000, got {SpmMaxCopies}");
        if (ApiPort is < 0 or > 65535) return ValidationResult.Error($"--api-port must be 0 to 65535, got {ApiPort}");
        if (TimeoutSeconds is < 5 or > 3600) return ValidationResult.Error($"--timeout must be 5 to 3600 seconds, got {TimeoutSeconds}");
        if (Hypervisor is not (null or "qmp" or "libvirt" or "sim")) return ValidationResult.Error($"--hypervisor must be qmp, libvirt or sim, got '{Hypervisor}'");
        if (!ByteRate.TryParse(SimCopyRate, out _))
            return ValidationResult.Error($"--sim-copy-rate '{SimCopyRate}' is not a rate like 64MiB/s, 512k or 0 (instant)");
        if (Hypervisor is not (null or "sim") && SimCopyRate != "0") return ValidationResult.Error("--sim-copy-rate needs --hypervisor sim");
        if (Hypervisor is not (null or "libvirt") && (LibvirtUri is not null || LibvirtGuestExport))
            return ValidationResult.Error("--libvirt-uri and --libvirt-guest-export need --hypervisor libvirt");
        return ValidationResult.Success();
    }
}

/// <summary><c>lsm local up</c>: a Coordinator and N hosts on loopback, detached; returns once the cluster is up.</summary>
public sealed class LocalUpCommand : AsyncCommand<LocalUpSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, LocalUpSettings settings, CancellationToken ct)
    {
        // Bringing a cluster back (some or all of its nodes died) takes what it ran with unless told otherwise: an up without
        // --hypervisor must not start a libvirt cluster's hosts on QEMU, nor one without --api-port move its API to 9110.
        var previous = await LocalClusterState.ReadAsync(settings.DataDirectory, ct);
        var hypervisor = settings.Hypervisor ?? previous?.Hypervisor ?? "qmp";
        if (hypervisor != "sim" && settings.SimCopyRate != "0") throw CliFailure.BadUsage("--sim-copy-rate needs --hypervisor sim");
        if (hypervisor != "libvirt" && (settings.LibvirtUri is not null || settings.LibvirtGuestExport))
            throw CliFailure.BadUsage("--libvirt-uri and --libvirt-guest-export need --hypervisor libvirt");
        // A PostgreSQL journal's address is recorded without its password: it cannot be taken from the state file, and a
        // cluster brought back on SQLite would not know its migrations.
        if (settings.Journal is null && previous is { Journal: var ran } && ran != "sqlite")
            throw CliFailure.BadUsage($"the local cluster in {previous.DataDirectory} ran with the journal {ran}: give its --journal postgres://... again " +
                                      "(or another --data-dir for a new cluster)");
        var apiPort = settings.ApiPort ?? (previous is { ApiPort: > 0 } last ? last.ApiPort : LocalClusterOptions.DefaultApiPort);
        var libvirtUri = settings.LibvirtUri ?? previous?.LibvirtUri ?? LibvirtCheck.DefaultUri;
        if (previous is not null && !settings.Json && (settings.Hypervisor is null || settings.ApiPort is null))
            Output.Console.MarkupLine(Output.Escape($"as the cluster in {previous.DataDirectory} ran: --hypervisor {hypervisor}" +
                                                    (hypervisor == "libvirt" ? $" --libvirt-uri {libvirtUri}" : "") + $" --api-port {apiPort}"));
        var options = new LocalClusterOptions(settings.DataDirectory)
        {
            Hosts = settings.Hosts,
            Coordinators = settings.Coordinators,
            SpmHosts = settings.SpmHosts,
            ApiPort = apiPort,
            Journal = settings.Journal ?? "sqlite",
            MaxPerHost = settings.MaxPerHost,
            MaxPerDomain = settings.MaxPerDomain,
            SpmMaxCopies = settings.SpmMaxCopies,
            ExtraHocon = settings.FastTimings ? ClusterNodeHosting.FastTestTimings : null,
            Timeout = TimeSpan.FromSeconds(settings.TimeoutSeconds),
            Hypervisor = hypervisor,
            SimCopyBytesPerSecond = ByteRate.TryParse(settings.SimCopyRate, out var simRate) ? simRate : 0,
            LibvirtUri = libvirtUri,
            LibvirtGuestExport = settings.LibvirtGuestExport,
            NodeHostnames = LocalUpSettings.Pairs(settings.NodeHostnames),
            NodeNetworkNamespaces = LocalUpSettings.Pairs(settings.NodeNetworkNamespaces),
            StorageRoots = settings.StorageRoots,
        };
        if (!settings.Json) Output.Console.MarkupLine($"starting a local cluster in [bold]{Output.Escape(options.DataDirectory)}[/]");
        var state = await LocalClusterLauncher.UpAsync(options, settings.Json ? null : line => Output.Console.MarkupLine("  " + Output.Escape(line)), ct);
        if (settings.Json)
        {
            Output.Json(state.ToJson());
            return ExitCodes.Ok;
        }
        LocalStatusCommand.Describe(state);
        var api = state.ApiPort == LocalClusterOptions.DefaultApiPort ? "" : $" --api {state.ApiUrl}";
        // The token rides in the link's fragment: the browser never sends a fragment to the server, and the dashboard
        // takes it into its session and drops it from the address bar, so nobody types it.
        var dashboard = state.ApiTokenFile is { } tokenFile && File.Exists(tokenFile)
            ? $"{state.ApiUrl}/#token={Uri.EscapeDataString(File.ReadAllText(tokenFile).Trim())}"
            : $"{state.ApiUrl}/";
        Output.Console.MarkupLine($"cluster up. Next: [bold]./lsm cluster show{Output.Escape(api)}[/], the dashboard at {Output.Escape(dashboard)}, " +
                                  $"stop it with [bold]./lsm local down{Output.Escape(DataDirOption(settings))}[/]");
        if (state.ApiTokenFile is { } operatorFile
            && Path.Combine(Path.GetDirectoryName(operatorFile)!, Shared.Hosting.ApiTokenFile.ViewerFileName) is var viewerFile && File.Exists(viewerFile))
            Output.Console.MarkupLine($"tokens: {Output.Escape(operatorFile)} (operator: everything), {Output.Escape(viewerFile)} (viewer: reads only; lsm --token-file)");
        return ExitCodes.Ok;
    }

    internal static string DataDirOption(LocalSettings settings) =>
        settings.DataDir is { Length: > 0 } ? $" --data-dir {settings.DataDirectory}" : "";
}

/// <summary><c>lsm local status</c>: the nodes of the state file, whether each still runs, and the VMs their hosts run.</summary>
public sealed class LocalStatusCommand : AsyncCommand<LocalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, LocalSettings settings, CancellationToken ct)
    {
        var state = await LocalClusterState.ReadAsync(settings.DataDirectory, ct);
        if (settings.Json)
        {
            Output.Json(new
            {
                dataDirectory = settings.DataDirectory,
                apiUrl = state?.ApiUrl,
                journal = state?.Journal,
                hypervisor = state?.Hypervisor,
                startedAt = state?.StartedAt,
                nodes = (state?.Nodes ?? []).Select(n => new { name = n.Name, role = n.Role, pid = n.Pid, alive = n.Alive, address = n.Address, port = n.Port, apiUrl = ApiOf(state!, n), logFile = n.LogFile }),
                vms = state is null ? [] : LocalClusterLauncher.RunningVms(state).Select(v => new { pid = v.Pid, pidFile = v.PidFile }).ToList(),
            });
            return ExitCodes.Ok;
        }
        if (state is null)
        {
            Output.Console.MarkupLine($"no local cluster in {Output.Escape(settings.DataDirectory)} (no {LocalClusterState.FileName}); start one with ./lsm local up");
            return ExitCodes.Ok;
        }
        Describe(state);
        return ExitCodes.Ok;
    }

    /// <summary>A Coordinator's API (the first one's from the state file's own field when its node has none: a file from before several Coordinators).</summary>
    private static string? ApiOf(LocalClusterState state, LocalNodeState node) =>
        node.ApiUrl ?? (node.Name == LocalCluster.FirstCoordinator ? state.ApiUrl : null);

    internal static void Describe(LocalClusterState state)
    {
        var table = new Table().AddColumns("Name", "Role", "PID", "Alive", "Cluster address", "API", "Log");
        foreach (var n in state.Nodes)
            table.AddRow(Output.Escape(n.Name), Output.Escape(n.Role), n.Pid.ToString(), n.Alive ? "[green]yes[/]" : "[red]no[/]",
                Output.Escape(n.Address ?? "-"), Output.Escape(ApiOf(state, n) ?? "-"), Output.Escape(n.LogFile));
        Output.Console.Write(table);
        var alive = state.AliveNodes.Count;
        // A libvirt host's VMs are libvirtd's domains, not QEMU pid files of ours: virsh lists them.
        var vms = state.LibvirtUri is { } uri
            ? $"hypervisor libvirt: VMs are libvirt domains (virsh -c {uri} list)"
            : $"{LocalClusterLauncher.RunningVms(state).Count()} VM(s) running";
        Output.Console.MarkupLine($"{alive} of {state.Nodes.Count} alive; {Output.Escape(vms)}; API {Output.Escape(state.ApiUrl)}; journal {Output.Escape(state.Journal)}; " +
                                  $"data {Output.Escape(state.DataDirectory)}; started {state.StartedAt:u}");
    }
}

/// <summary><c>lsm local down</c>: SIGTERM, then SIGKILL after a grace period, to every node, then their VMs; returns when all are gone.</summary>
public sealed class LocalDownCommand : AsyncCommand<LocalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, LocalSettings settings, CancellationToken ct)
    {
        var result = await LocalClusterLauncher.DownAsync(settings.DataDirectory, settings.Json ? null : line => Output.Console.MarkupLine("  " + Output.Escape(line)), ct);
        if (settings.Json)
        {
            Output.Json(new
            {
                dataDirectory = settings.DataDirectory,
                stopped = result.StoppedNodes.Select(n => new { name = n.Name, pid = n.Pid }),
                stoppedVmPids = result.StoppedVmPids,
                stoppedDomains = result.StoppedDomains,
            });
            return ExitCodes.Ok;
        }
        // Nothing to stop is not an error: down is safe to run whenever, e.g. before an up in a script.
        Output.Console.MarkupLine(result.NothingRan
            ? $"nothing runs in {Output.Escape(settings.DataDirectory)}: no node of a local cluster and no VM"
            : $"stopped {result.StoppedNodes.Count} node(s) and {result.StoppedVmPids.Count + result.StoppedDomains.Count} VM(s); logs and data stay in {Output.Escape(settings.DataDirectory)}");
        return ExitCodes.Ok;
    }
}
