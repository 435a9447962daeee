using System.Collections.Concurrent;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>The domains this host has attached, and the walk of a chain across them. Thread-safe: a domain created at runtime is attached while others read.</summary>
public sealed class StoragePool
{
    private readonly ConcurrentDictionary<DomainId, IStorageDomain> _domains;

    public StoragePool(IEnumerable<IStorageDomain>? domains = null)
    {
        _domains = new ConcurrentDictionary<DomainId, IStorageDomain>();
        foreach (var d in domains ?? []) Attach(d);
    }

    private StoragePool(ConcurrentDictionary<DomainId, IStorageDomain> domains, IStorageFence fence, StorageRootPolicy allowedRoots, IDomainFactory factory)
    {
        _domains = domains;
        Fence = fence;
        AllowedRoots = allowedRoots;
        DomainFactory = factory;
    }

    /// <summary>
    /// Where this host may create or attach file domains (<see cref="StorageRootPolicy"/>); none unless configured, so a
    /// pool nobody configured makes no folder anywhere.
    /// </summary>
    public StorageRootPolicy AllowedRoots { get; init; } = StorageRootPolicy.None;

    /// <summary>How this host makes and finds domains under a root: file domains unless it is a sim host.</summary>
    public IDomainFactory DomainFactory { get; init; } = FileDomainFactory.Instance;

    /// <summary>What every change through this pool is fenced by (the SPM's view of the pool), or null (a host's own view).</summary>
    public IStorageFence? Fence { get; }

    /// <summary>
    /// The same domains, each seen through a <see cref="FencedStorageDomain"/> over <paramref name="fence"/>: the SPM's view,
    /// so its every change is checked against the lease while the host's HSM and reports use the plain pool. A domain
    /// attached through either view is seen by both.
    /// </summary>
    public StoragePool FencedBy(IStorageFence fence) => new(_domains, fence, AllowedRoots, DomainFactory);

    /// <summary>A snapshot of the attached domains.</summary>
    public IReadOnlyCollection<IStorageDomain> Domains => _domains.Values.Select(Seen).ToList();

    public void Attach(IStorageDomain domain) => _domains[domain.Id] = domain;

    public IStorageDomain Get(DomainId id) =>
        _domains.TryGetValue(id, out var d)
            ? Seen(d)
            : throw new OperationFailedException(ErrorCodes.DomainNotFound, $"storage domain {id} is not attached to this host");

    private IStorageDomain Seen(IStorageDomain domain) =>
        Fence is null || domain is FencedStorageDomain ? domain : new FencedStorageDomain(domain, Fence);

    /// <summary>
    /// The chain a drive opens: from the image's leaf on <paramref name="leafDomain"/> down to its base,
    /// following parents across domains.
    /// </summary>
    public async Task<DriveChain> ResolveChainAsync(DomainId leafDomain, ImageId image, CancellationToken ct = default)
    {
        var domain = Get(leafDomain);
        var leaf = (await domain.DescribeImageAsync(image, ct)).Leaf;
        return await ResolveChainAsync(leaf, ct);
    }

    /// <summary>The chain from <paramref name="top"/> down to its base, following parents across domains.</summary>
    public async Task<DriveChain> ResolveChainAsync(VolumeInfo top, CancellationToken ct = default)
    {
        var layers = new List<ChainLayer>();
        VolumeInfo? current = top;
        while (current is not null)
        {
            var domain = Get(current.Domain);
            layers.Add(new ChainLayer(new VolumeRef(current.Domain, current.Id), domain.Locate(current.Image, current.Id), current.Format));
            if (layers.Count > 256)
                throw new OperationFailedException(ErrorCodes.Conflict, $"chain of image {top.Image} loops or is deeper than 256 layers");
            current = current.Parent is { } p
                ? await Get(p.Domain).DescribeVolumeAsync(top.Image, p.Volume, ct)
                : null;
        }
        layers.Reverse();
        return new DriveChain(top.Image, layers);
    }
}
