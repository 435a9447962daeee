using LiveMigration.HostNode.Storage.File;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>
/// How a host makes a new storage domain under a root and attaches the domains it finds under one: file domains on the
/// real hosts, in-memory ones on the sim hosts (<c>--hypervisor sim</c>). The root has been checked by the caller.
/// </summary>
public interface IDomainFactory
{
    /// <summary>A new, empty domain of <paramref name="capacityBytes"/> (0: as much as the root's file system has free).</summary>
    Task<IStorageDomain> CreateAsync(string root, DomainId id, string name, long capacityBytes, CancellationToken ct = default);

    /// <summary>The domains under <paramref name="root"/> that <paramref name="known"/> does not hold yet.</summary>
    Task<IReadOnlyList<IStorageDomain>> FindUnderAsync(string root, IReadOnlySet<DomainId> known, CancellationToken ct = default);
}

/// <summary>File domains: a folder per domain under the root, named by its id and holding its metadata (VDSM's layout).</summary>
public sealed class FileDomainFactory : IDomainFactory
{
    public static readonly FileDomainFactory Instance = new();

    public async Task<IStorageDomain> CreateAsync(string root, DomainId id, string name, long capacityBytes, CancellationToken ct = default)
    {
        StorageModes.CreateFolder(root);
        var capacity = capacityBytes > 0 ? capacityBytes : new DriveInfo(root).AvailableFreeSpace;
        return await FileStorageDomain.CreateAsync(root, id, name, capacity, ct);
    }

    public async Task<IReadOnlyList<IStorageDomain>> FindUnderAsync(string root, IReadOnlySet<DomainId> known, CancellationToken ct = default)
    {
        if (!Directory.Exists(root)) return [];
        var found = new List<IStorageDomain>();
        foreach (var dir in Directory.EnumerateDirectories(root))
        {
            if (!DomainId.TryParse(Path.GetFileName(dir), out var id) || known.Contains(id.Value)
                || !System.IO.File.Exists(Path.Combine(dir, "dom_md", "metadata"))) continue;
            found.Add(await FileStorageDomain.AttachAsync(root, id.Value, ct));
        }
        return found;
    }
}

/// <summary>
/// In-memory domains shared by the sim hosts of one process (they stand for hosts that mount the same storage): a
/// domain one host creates is found by the others under the same root. Nothing survives the process.
/// </summary>
public sealed class SimDomainFactory(SimStorageOptions options) : IDomainFactory
{
    /// <summary>What a sim domain created with capacity 0 gets: there is no file system to ask.</summary>
    public const long DefaultCapacityBytes = 1L << 50;

    private readonly object _gate = new();
    private readonly List<(string Root, SimStorageDomain Domain)> _domains = [];

    public Task<IStorageDomain> CreateAsync(string root, DomainId id, string name, long capacityBytes, CancellationToken ct = default)
    {
        var domain = new SimStorageDomain(id, name, capacityBytes > 0 ? capacityBytes : DefaultCapacityBytes, options);
        lock (_gate) _domains.Add((root, domain));
        return Task.FromResult<IStorageDomain>(domain);
    }

    public Task<IReadOnlyList<IStorageDomain>> FindUnderAsync(string root, IReadOnlySet<DomainId> known, CancellationToken ct = default)
    {
        lock (_gate)
            return Task.FromResult<IReadOnlyList<IStorageDomain>>(
                _domains.Where(d => d.Root == root && !known.Contains(d.Domain.Id)).Select(d => (IStorageDomain)d.Domain).ToList());
    }
}
