using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.HostNode.Hosting;

/// <summary>A HostNode's configuration, from appsettings.json, LSM_ environment variables and the command line.</summary>
public sealed record HostNodeSettings(
    string HostId,
    string DataDirectory,
    string Hypervisor,
    IReadOnlyList<string> DomainRoots,
    ClusterNodeSettings Cluster)
{
    /// <summary>
    /// Folders (besides <see cref="DomainRoots"/>) under which storage domains may be created and attached at runtime
    /// (<c>lsm domain create --path</c>); any other path is refused (<see cref="StorageRootPolicy"/>).
    /// </summary>
    public IReadOnlyList<string> AllowedStorageRoots { get; init; } = [];

    /// <summary>What this host may create and attach: its configured domain roots and the allowed storage roots.</summary>
    public StorageRootPolicy StorageRoots => new(DomainRoots.Concat(AllowedStorageRoots));

    /// <summary>The libvirt connection URI when <see cref="Hypervisor"/> is <c>libvirt</c>.</summary>
    public string LibvirtUri { get; init; } = "qemu:///system";
    /// <summary>Export each libvirt VM's drives over NBD for a stand-in guest (demo and test hosts; taints the domains).</summary>
    public bool LibvirtGuestExport { get; init; }

    /// <summary>The unprivileged account QEMU runs as (<c>--qemu-user</c>, QMP hosts); null runs it as this host's user.</summary>
    public QemuAccount? QemuAccount { get; init; }

    /// <summary>
    /// The pool's SPM lease (DESIGN §7a), required on an SPM-capable host: the file on the shared storage (beside the
    /// domains, at the same path on every host), its period and margin.
    /// </summary>
    public SpmLeaseSettings? SpmLease { get; init; }

    /// <summary>How many migration steps the SPM copies data for at once (<c>--spm-max-copies</c>; 0 = no bound).</summary>
    public int SpmMaxCopies { get; init; } = SpmActor.DefaultMaxConcurrentCopies;

    public string RunDirectory => Path.Combine(DataDirectory, "run");
    public const UnixFileMode RunDirectoryMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
    public bool SpmCapable => Cluster.Roles.Contains(HostNodeHosting.SpmRole);

    /// <summary>The command-line switches and the configuration keys they set.</summary>
    public static readonly IReadOnlyDictionary<string, string> Switches = new Dictionary<string, string>(ClusterNodeSettings.Switches)
    {
        ["--host-id"] = "HostNode:HostId",
        ["--data-dir"] = "HostNode:DataDirectory",
        ["--hypervisor"] = "HostNode:Hypervisor",
        ["--domain-root"] = "HostNode:DomainRoots",
        ["--allowed-storage-roots"] = "HostNode:AllowedStorageRoots",
        ["--libvirt-uri"] = "HostNode:LibvirtUri",
        ["--libvirt-guest-export"] = "HostNode:LibvirtGuestExport",
        ["--spm-lease"] = "HostNode:SpmLease:Path",
        ["--spm-lease-period"] = "HostNode:SpmLease:Period",
        ["--spm-lease-margin"] = "HostNode:SpmLease:Margin",
        ["--qemu-user"] = "HostNode:QemuUser",
        ["--sim-hosts"] = "HostNode:SimHosts",
        ["--sim-spm-hosts"] = "HostNode:SimSpmHosts",
        ["--sim-copy-rate"] = "HostNode:SimCopyRate",
        ["--spm-max-copies"] = "HostNode:SpmMaxCopies",
    };

    public static HostNodeSettings From(IConfiguration config)
    {
        var hostId = config["HostNode:HostId"] ?? "host-1";
        if (hostId.Length is 0 or > 32 || !hostId.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-'))
            throw new ArgumentException($"host id '{hostId}' must be 1-32 lower-case letters, digits and dashes (e.g. host-1)");
        var hypervisor = config["HostNode:Hypervisor"] ?? "qmp";
        if (hypervisor is not ("qmp" or "libvirt" or "sim"))
            throw new ArgumentException($"hypervisor '{hypervisor}' is not known to a HostNode process (qmp, libvirt, sim)");
        var guestExport = config["HostNode:LibvirtGuestExport"] ?? "false";
        if (!bool.TryParse(guestExport, out var exportGuests))
            throw new ArgumentException($"--libvirt-guest-export must be true or false, got '{guestExport}'");
        var qemuUser = config["HostNode:QemuUser"] is { Length: > 0 } user ? user : null;
        if (qemuUser is not null && hypervisor != "qmp")
            throw new ArgumentException("--qemu-user is for QMP hosts: libvirt starts QEMU as the user its qemu.conf names, sim hosts start none");
        var qemuAccount = qemuUser is null ? null : QemuAccount.Find(qemuUser);
        var cluster = ClusterNodeSettings.FromConfiguration(config, HostNodeHosting.HostRole);
        var spmLease = SpmLeaseFrom(config);
        var maxCopiesText = config["HostNode:SpmMaxCopies"];
        var maxCopies = maxCopiesText is not { Length: > 0 } ? SpmActor.DefaultMaxConcurrentCopies
            : int.TryParse(maxCopiesText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n <= 10_000 ? n
            : throw new ArgumentException($"--spm-max-copies must be 0 (no bound) to 10000, got '{maxCopiesText}'");
        // DESIGN §7 invariant 6: only the lease's holder changes storage. An SPM without one could write beside its
        // paused or partitioned predecessor, so a process refuses the role rather than run it unfenced.
        if (cluster.Roles.Contains(HostNodeHosting.SpmRole) && spmLease is null)
            throw new ArgumentException("an SPM-capable host (--roles host,spm) needs the pool's SPM lease: --spm-lease PATH, a file on the " +
                                        "shared storage every SPM-capable host mounts at the same path (e.g. <domain root>/spm.lease)");
        return new HostNodeSettings(
            hostId,
            Path.GetFullPath(config["HostNode:DataDirectory"] ?? Path.Combine("var", hostId)),
            hypervisor,
            PathList(config["HostNode:DomainRoots"]),
            cluster)
        {
            AllowedStorageRoots = PathList(config["HostNode:AllowedStorageRoots"]),
            SpmLease = spmLease,
            LibvirtUri = config["HostNode:LibvirtUri"] is { Length: > 0 } uri ? uri : "qemu:///system",
            LibvirtGuestExport = exportGuests,
            QemuAccount = qemuAccount,
            SpmMaxCopies = maxCopies,
        };
    }

    /// <summary>A comma-separated list of folders, each made absolute.</summary>
    private static List<string> PathList(string? text) =>
        (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(Path.GetFullPath).ToList();

    private static SpmLeaseSettings? SpmLeaseFrom(IConfiguration config)
    {
        var period = config["HostNode:SpmLease:Period"] is { Length: > 0 } p
            ? SpmLeaseSettings.ParseDuration(p, "--spm-lease-period")
            : SpmLeaseSettings.DefaultPeriod;
        var margin = config["HostNode:SpmLease:Margin"] is { Length: > 0 } m
            ? SpmLeaseSettings.ParseDuration(m, "--spm-lease-margin")
            : SpmLeaseSettings.DefaultMargin;
        if (config["HostNode:SpmLease:Path"] is not { Length: > 0 } path) return null;
        if (path.Contains('"') || path.Contains('\n'))
            throw new ArgumentException($"--spm-lease '{path}' must be a plain file path");
        return new SpmLeaseSettings(Path.GetFullPath(path), period, margin);
    }

    /// <summary>The real components: every file domain found under the domain roots, and QEMU over QMP or through libvirt.</summary>
    public async Task<HostNodeComponents> CreateComponentsAsync(CancellationToken ct = default)
    {
        // Before any domain is opened: what this host makes from now on belongs to QEMU's group too (StorageModes).
        if (QemuAccount is { } account) StorageModes.UseQemuGroup(account.Gid);
        var pool = new StoragePool { AllowedRoots = StorageRoots };
        foreach (var root in DomainRoots)
        {
            if (!Directory.Exists(root))
                throw new ArgumentException($"domain root {root} does not exist");
            foreach (var dir in Directory.EnumerateDirectories(root))
            {
                // Only folders named by a UUID and holding domain metadata are domains.
                if (DomainId.TryParse(Path.GetFileName(dir), out var id) && File.Exists(Path.Combine(dir, "dom_md", "metadata")))
                    pool.Attach(await FileStorageDomain.AttachAsync(root, id.Value, ct));
            }
        }
        // QEMU's manifests, pid files, logs and (when short enough) its sockets: this host's alone.
        StorageModes.CreatePrivateFolder(RunDirectory, RunDirectoryMode);
        StorageModes.SetMode(RunDirectory, RunDirectoryMode);
        IHypervisor hypervisor = Hypervisor == "libvirt"
            ? new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = RunDirectory, Uri = LibvirtUri, GuestNbdExport = LibvirtGuestExport })
            : new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = RunDirectory, QemuAccount = QemuAccount });
        return new HostNodeComponents(HostId, pool, hypervisor);
    }
}
