using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage.Sim;

/// <summary>
/// An in-memory storage domain: the same contract and metadata as the <c>file</c> kind, with data
/// modelled only by its size (allocated bytes per volume) and copies paced by a modelled rate.
/// For scale tests and benchmarks; faults are injected through <see cref="Faults"/>.
/// Thread-safe: every state change happens under one lock, waits happen outside it.
/// </summary>
public sealed class SimStorageDomain : IStorageDomain
{
    public const string SimKind = "sim";

    private readonly object _gate = new();
    private readonly Dictionary<ImageId, Dictionary<VolumeId, SimVolume>> _images = new();
    private readonly Dictionary<(ImageId, VolumeId), Task<VolumeInfo>> _copiesInFlight = new();
    /// <summary>How many holders have each volume open (the sim's stand-in for QEMU's image locks).</summary>
    private readonly Dictionary<(ImageId, VolumeId), int> _openCounts = new();
    /// <summary>Bytes of deletes that died half-way: hidden from every reader, still taking space until the cleanup.</summary>
    private readonly List<SimVolume> _halfDeleted = new();
    // the bytes every volume the domain holds (listed or half-deleted) allocates, kept as they change: summing all
    // volumes for each chunk of each copy was what 10,000 paced sim copies spent a host process's cores on
    private readonly Usage _used = new();
    private long _nextSequence;

    public SimStorageDomain(DomainId id, string name, long capacityBytes, SimStorageOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (capacityBytes <= 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"domain {name} ({id}): capacity must be positive, got {capacityBytes} bytes");
        options ??= new SimStorageOptions();
        if (options.CopyBytesPerSecond <= 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"domain {name} ({id}): copy rate must be positive, got {options.CopyBytesPerSecond} bytes/s");
        if (options.ProgressStepBytes <= 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"domain {name} ({id}): progress step must be positive, got {options.ProgressStepBytes} bytes");
        Id = id;
        Name = name;
        CapacityBytes = capacityBytes;
        Options = options;
    }

    public DomainId Id { get; }
    public bool Reachable => true;
    public string Name { get; }
    public long CapacityBytes { get; }
    public string Kind => SimKind;
    public SimStorageOptions Options { get; }
    public SimFaults Faults => Options.Faults;

    // ---- test and benchmark helpers (not part of the port) ----

    /// <summary>
    /// Says how much data a volume holds, as a guest or qemu-io writing into it would: sets its
    /// allocated bytes (at most its capacity, and only as far as the domain has room).
    /// </summary>
    public VolumeInfo SeedAllocated(ImageId image, VolumeId volume, long allocatedBytes)
    {
        lock (_gate)
        {
            var v = GetVolume(image, volume);
            if (allocatedBytes < 0 || allocatedBytes > v.Capacity)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"volume {image}/{volume}: allocated bytes must be between 0 and its capacity {v.Capacity}, got {allocatedBytes}");
            var growth = allocatedBytes - v.AllocatedBytes;
            var available = AvailableLocked();
            if (growth > available)
                throw new OperationFailedException(ErrorCodes.NotEnoughSpace,
                    $"domain {Name} ({Id}): seeding {allocatedBytes} bytes into volume {volume} needs {growth} more bytes, {available} available");
            v.AllocatedBytes = allocatedBytes;
            return v.ToInfo(Id);
        }
    }

    /// <summary>
    /// Holds a volume open until the result is disposed, as a QEMU process holds its image files (and locks them):
    /// while held, deletes refuse with VOLUME_IN_USE.
    /// </summary>
    public IDisposable HoldOpen(ImageId image, VolumeId volume)
    {
        lock (_gate)
        {
            GetVolume(image, volume);
            _openCounts[(image, volume)] = _openCounts.GetValueOrDefault((image, volume)) + 1;
        }
        return new Release(() =>
        {
            lock (_gate)
                if (_openCounts.TryGetValue((image, volume), out var n))
                {
                    if (n <= 1) _openCounts.Remove((image, volume));
                    else _openCounts[(image, volume)] = n - 1;
                }
        });
    }

    private sealed class Release(Action release) : IDisposable
    {
        private int _done;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) release();
        }
    }

    // ---- the port ----

    public Task<DomainInfo> DescribeAsync(CancellationToken ct = default)
    {
        lock (_gate)
        {
            var used = UsedLocked();
            return Task.FromResult(new DomainInfo(Id, Name, Kind, CapacityBytes, used, FilesystemFreeLocked(used)));
        }
    }

    /// <summary>Counted anew each time: the sim holds its figures in memory.</summary>
    public Task<DomainInfo> DescribeAsync(TimeSpan usedMaxAge, CancellationToken ct = default) => DescribeAsync(ct);

    public Task<IReadOnlyList<ImageId>> ListImagesAsync(CancellationToken ct = default)
    {
        lock (_gate)
            return Task.FromResult<IReadOnlyList<ImageId>>(_images.Keys.OrderBy(i => i.Value).ToList());
    }

    public Task<ImageInfo> DescribeImageAsync(ImageId image, CancellationToken ct = default)
    {
        lock (_gate) return Task.FromResult(DescribeImageLocked(image));
    }

    public Task<VolumeInfo> DescribeVolumeAsync(ImageId image, VolumeId volume, CancellationToken ct = default)
    {
        lock (_gate) return Task.FromResult(GetVolume(image, volume).ToInfo(Id));
    }

    public string Locate(ImageId image, VolumeId volume) => $"sim:{Id}/{image}/{volume}";

    public async Task<VolumeInfo> CreateVolumeAsync(NewVolume spec, IStorageDomain? parentDomain = null, CancellationToken ct = default)
    {
        await Faults.EnterAsync(nameof(CreateVolumeAsync), $"volume {spec.Image}/{spec.Id} on domain {Name}", ct);
        if (spec.Capacity <= 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"volume {spec.Image}/{spec.Id}: capacity must be positive, got {spec.Capacity} bytes");
        if (spec.Id.IsBlank)
            throw new OperationFailedException(ErrorCodes.InvalidId, $"volume id of image {spec.Image} must not be the blank UUID");
        if (spec.Format == VolumeFormat.Raw && spec.Parent is not null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"volume {spec.Image}/{spec.Id}: a RAW volume cannot have a parent ({spec.Parent}); only a base may be RAW");
        if (spec.Allocation == VolumeAllocation.Preallocated && spec.Parent is not null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"volume {spec.Image}/{spec.Id}: only a base volume can be preallocated, it has parent {spec.Parent}");

        VolumeInfo? remoteParent = null;
        if (spec.Parent is { } p && p.Domain != Id)
        {
            var other = RequireOtherSimDomain(parentDomain, p.Domain, $"parent of volume {spec.Image}/{spec.Id}");
            remoteParent = await other.DescribeVolumeAsync(spec.Image, p.Volume, ct);
        }

        lock (_gate)
        {
            if (spec.Owner is { } owner)
                RequireOnlyOwnedLocked(spec.Image, owner);
            if (TryGetVolume(spec.Image, spec.Id) is { } existing)
            {
                if (existing.Format == spec.Format && existing.Capacity == spec.Capacity && existing.Parent == spec.Parent && existing.Allocation == spec.Allocation)
                    return existing.ToInfo(Id);
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {spec.Image}/{spec.Id} exists on domain {Name} as {existing.Format} {existing.Allocation}, {existing.Capacity} bytes, parent {Describe(existing.Parent)}; " +
                    $"asked for {spec.Format} {spec.Allocation}, {spec.Capacity} bytes, parent {Describe(spec.Parent)}");
            }
            SimVolume? localParent = null;
            if (spec.Parent is { } lp && lp.Domain == Id)
                localParent = TryGetVolume(spec.Image, lp.Volume)
                    ?? throw new OperationFailedException(ErrorCodes.VolumeNotFound,
                        $"parent volume {lp.Volume} of {spec.Image}/{spec.Id} is not on domain {Name} ({Id})");
            if (remoteParent is null && localParent is null && spec.Parent is not null)
                throw new OperationFailedException(ErrorCodes.VolumeNotFound, $"parent {spec.Parent} of volume {spec.Image}/{spec.Id} was not found");

            if (PreallocatedBytes(spec.Format, spec.Allocation, spec.Capacity) is > 0 and var preallocated)
                RequireRoomLocked(preallocated, $"preallocating volume {spec.Image}/{spec.Id} ({preallocated} bytes)");
            var created = AddVolumeLocked(spec.Image, spec.Id, spec.Parent, VolumeType.Leaf, spec.Format, spec.Legality, spec.Capacity, spec.Owner,
                spec.Allocation);
            if (localParent is not null) localParent.Type = VolumeType.Internal;
            return created.ToInfo(Id);
        }
    }

    public async Task<ImageInfo> CloneImageStructureAsync(IStorageDomain source, ImageId image, VolumeOwner owner, CancellationToken ct = default)
    {
        await Faults.EnterAsync(nameof(CloneImageStructureAsync), $"image {image} onto domain {Name}", ct);
        RequireOtherSimDomain(source, source.Id, $"source of image {image}");
        var sourceImage = await source.DescribeImageAsync(image, ct);

        lock (_gate)
        {
            RequireOnlyOwnedLocked(image, owner);
            var missing = new List<VolumeInfo>();
            foreach (var sv in sourceImage.Volumes)
            {
                var parent = MapParent(sv.Parent, source.Id);
                if (TryGetVolume(image, sv.Id) is { } twin)
                {
                    if (twin.Format != sv.Format || twin.Capacity != sv.Capacity || twin.Parent != parent)
                        throw new OperationFailedException(ErrorCodes.Conflict,
                            $"volume {image}/{sv.Id} exists on domain {Name} as {twin.Format}, {twin.Capacity} bytes, parent {Describe(twin.Parent)}, " +
                            $"which is not a twin of the source's {sv.Format}, {sv.Capacity} bytes, parent {Describe(parent)}");
                    continue;
                }
                missing.Add(sv);
            }

            var need = missing.Sum(v => v.AllocatedBytes);
            RequireRoomLocked(need, $"cloning image {image} ({missing.Count} volumes, {need} bytes of data at the source {source.Id})");

            foreach (var sv in missing)
            {
                var parent = MapParent(sv.Parent, source.Id);
                AddVolumeLocked(image, sv.Id, parent, sv.Type, sv.Format, Legality.Illegal, sv.Capacity, owner, sv.Allocation);
            }
            foreach (var sv in missing)
                if (sv.Parent is { } p && p.Domain == source.Id && TryGetVolume(image, p.Volume) is { } localParent)
                    localParent.Type = VolumeType.Internal;
            return DescribeImageLocked(image);
        }
    }

    public async Task<VolumeInfo> CopyVolumeDataAsync(IStorageDomain source, ImageId image, VolumeId volume,
        IProgress<CopyProgress>? progress = null, CancellationToken ct = default, CopyRate? rate = null)
    {
        var fault = Faults.Take(nameof(CopyVolumeDataAsync));
        if (fault is SimFault.Fail fail)
            throw new OperationFailedException(fail.Code, $"injected fault: copy of {image}/{volume} onto domain {Name} failed");
        RequireOtherSimDomain(source, source.Id, $"source of volume {image}/{volume}");
        var sourceVolume = await source.DescribeVolumeAsync(image, volume, ct);

        Task<VolumeInfo> copy;
        lock (_gate)
        {
            var twin = GetVolume(image, volume);
            var expectedParent = MapParent(sourceVolume.Parent, source.Id);
            if (twin.Format != sourceVolume.Format || twin.Capacity != sourceVolume.Capacity || twin.Parent != expectedParent)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {image}/{volume} on domain {Name} ({twin.Format}, {twin.Capacity} bytes, parent {Describe(twin.Parent)}) " +
                    $"is not a twin of the source's ({sourceVolume.Format}, {sourceVolume.Capacity} bytes, parent {Describe(expectedParent)})");
            if (twin.Legality == Legality.Legal)
                return twin.ToInfo(Id);
            if (_copiesInFlight.TryGetValue((image, volume), out var running))
            {
                // a repeat of a copy still running attaches to it
                copy = running;
            }
            else
            {
                if (sourceVolume.Legality == Legality.Illegal)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"source volume {image}/{volume} on domain {source.Id} is ILLEGAL: its data is not complete and is never copied");
                // a previous attempt's partial data is overwritten
                twin.AllocatedBytes = 0;
                RequireRoomLocked(sourceVolume.AllocatedBytes, $"copying volume {image}/{volume} ({sourceVolume.AllocatedBytes} bytes of data)");
                copy = RunCopyAsync(twin, sourceVolume, fault, progress, rate, ct);
                _copiesInFlight[(image, volume)] = copy;
            }
        }
        return await copy.WaitAsync(ct);
    }

    public async Task<VolumeInfo> SetParentAsync(ImageId image, VolumeId volume, VolumeRef newParent, IStorageDomain? parentDomain,
        bool rewriteHeader, CancellationToken ct = default)
    {
        await Faults.EnterAsync(nameof(SetParentAsync), $"volume {image}/{volume} on domain {Name}", ct);
        VolumeInfo? remoteParent = null;
        if (newParent.Domain != Id)
        {
            var other = RequireOtherSimDomain(parentDomain, newParent.Domain, $"new parent of volume {image}/{volume}");
            remoteParent = await other.DescribeVolumeAsync(image, newParent.Volume, ct);
        }

        lock (_gate)
        {
            var v = GetVolume(image, volume);
            if (v.Parent == newParent) return v.ToInfo(Id);
            if (v.Parent is not { } oldParent)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"volume {image}/{volume} on domain {Name} is a base volume: it has no parent to re-point to {newParent}");
            if (oldParent.Volume != newParent.Volume)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"volume {image}/{volume}: the new parent {newParent} must be a copy of the current parent {oldParent} (same volume id)");
            var localParent = newParent.Domain == Id ? GetVolume(image, newParent.Volume) : null;
            var parentLegality = localParent?.Legality ?? remoteParent!.Legality;
            if (parentLegality == Legality.Illegal)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {image}/{volume} cannot be re-pointed to {newParent}: that copy is ILLEGAL (not complete and verified)");
            v.Parent = newParent;
            v.Generation++;
            if (localParent is not null) localParent.Type = VolumeType.Internal;
            return v.ToInfo(Id);
        }
    }

    public async Task<VolumeInfo> MarkLegalAsync(ImageId image, VolumeId volume, CancellationToken ct = default)
    {
        await Faults.EnterAsync(nameof(MarkLegalAsync), $"volume {image}/{volume} on domain {Name}", ct);
        lock (_gate)
        {
            var v = GetVolume(image, volume);
            if (v.Legality == Legality.Illegal)
            {
                v.Legality = Legality.Legal;
                v.Generation++;
            }
            return v.ToInfo(Id);
        }
    }

    public async Task DeleteImageAsync(ImageId image, CancellationToken ct = default)
    {
        var fault = await TakeDeleteFaultAsync(nameof(DeleteImageAsync), image, ct);
        lock (_gate)
        {
            if (!_images.TryGetValue(image, out var volumes)) return;
            RequireNoneOpenLocked(image, volumes.Values);
            RemoveLocked(image, volumes.Values.ToList(), fault);
        }
    }

    public async Task<IReadOnlyList<VolumeInfo>> AdoptVolumesAsync(ImageId image, MigrationId from, VolumeOwner to, CancellationToken ct = default)
    {
        await Faults.EnterAsync(nameof(AdoptVolumesAsync), $"image {image} on domain {Name}", ct);
        lock (_gate)
        {
            if (!_images.TryGetValue(image, out var volumes)) return [];
            var adopted = new List<VolumeInfo>();
            foreach (var v in volumes.Values.Where(v => v.Owner?.Migration == from))
            {
                v.Owner = to;
                adopted.Add(v.ToInfo(Id));
            }
            return adopted;
        }
    }

    public async Task<IReadOnlyList<VolumeInfo>> DeleteOwnedVolumesAsync(ImageId image, VolumeOwner owner, CancellationToken ct = default)
    {
        var fault = await TakeDeleteFaultAsync(nameof(DeleteOwnedVolumesAsync), image, ct);
        lock (_gate)
        {
            if (!_images.TryGetValue(image, out var volumes)) return [];
            var owned = volumes.Values.Where(v => v.Owner?.Migration == owner.Migration).ToList();
            if (owned.Count == 0) return [];
            RequireNotStaleLocked(image, owned, owner);
            var ownedIds = owned.Select(v => v.Id).ToHashSet();
            if (volumes.Values.FirstOrDefault(v => !ownedIds.Contains(v.Id) && v.Parent is { } p && p.Domain == Id && ownedIds.Contains(p.Volume)) is { } over)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {image}/{over.Id} on domain {Name}, owned by {over.Owner?.ToString() ?? "nobody (an operator's)"}, lies over " +
                    $"volume {over.Parent!.Value.Volume} that {owner} made: deleting it would break that chain, so nothing is deleted");
            RequireNoneOpenLocked(image, owned);
            var gone = owned.Select(v => v.ToInfo(Id) with { Legality = Legality.Illegal, AllocatedBytes = 0 }).ToList();
            RemoveLocked(image, owned, fault);
            return gone;
        }
    }

    /// <summary>
    /// Faults of a delete: Fail refuses it, Stall waits, Die crashes it half-way (see <see cref="RemoveLocked"/>).
    /// OutOfSpace does nothing: a delete needs no free space (it writes no metadata).
    /// </summary>
    private async Task<SimFault?> TakeDeleteFaultAsync(string operation, ImageId image, CancellationToken ct)
    {
        var fault = Faults.Take(operation);
        switch (fault)
        {
            case SimFault.Fail f:
                throw new OperationFailedException(f.Code, $"injected fault: {operation} of image {image} on domain {Name} failed");
            case SimFault.Stall s:
                await s.Handle.BlockAsync(ct);
                break;
        }
        return fault is SimFault.Die ? fault : null;
    }

    /// <summary>
    /// As the file adapter: the volumes vanish from every reader at once. A delete that dies half-way leaves their
    /// bytes taken by hidden leftovers that only <see cref="RemoveIllegalLeftoversAsync"/> frees.
    /// </summary>
    private void RemoveLocked(ImageId image, IReadOnlyList<SimVolume> doomed, SimFault? die)
    {
        var volumes = _images[image];
        foreach (var v in doomed) volumes.Remove(v.Id);
        if (volumes.Count == 0) _images.Remove(image);
        if (die is not null)
        {
            // hidden, and still taking their space
            _halfDeleted.AddRange(doomed);
            throw new OperationFailedException(ErrorCodes.IoError,
                $"injected fault: delete of image {image} on domain {Name} died after hiding its {doomed.Count} volumes, before freeing their space");
        }
        foreach (var v in doomed) v.Uncount();
    }

    private void RequireNoneOpenLocked(ImageId image, IEnumerable<SimVolume> volumes)
    {
        if (volumes.FirstOrDefault(v => _openCounts.ContainsKey((image, v.Id))) is { } open)
            throw new OperationFailedException(ErrorCodes.VolumeInUse,
                $"volume {image}/{open.Id} on domain {Name} is open ({_openCounts[(image, open.Id)]} holder(s)); it is not deleted while in use");
    }

    /// <summary>Invariant 3, as the file adapter: only this migration's volumes are adopted; a newer generation means a stale caller.</summary>
    private void RequireOnlyOwnedLocked(ImageId image, VolumeOwner owner)
    {
        if (!_images.TryGetValue(image, out var volumes)) return;
        var foreign = volumes.Values.Where(v => v.Owner?.Migration != owner.Migration).ToList();
        if (foreign.Count > 0)
            throw new OperationFailedException(ErrorCodes.DestinationHoldsImage,
                $"domain {Name} ({Id}) already holds {foreign.Count} volume(s) of image {image} that {owner} did not make " +
                $"({string.Join(", ", foreign.Select(v => $"{v.Id} {v.Legality} owned by {v.Owner?.ToString() ?? "nobody (an operator's)"}"))}); " +
                "they are neither adopted nor deleted: remove them or move the disk elsewhere");
        RequireNotStaleLocked(image, volumes.Values, owner);
    }

    private static void RequireNotStaleLocked(ImageId image, IEnumerable<SimVolume> owned, VolumeOwner owner)
    {
        if (owned.FirstOrDefault(v => v.Owner is { } o && o.Migration == owner.Migration && o.Generation > owner.Generation) is { } newer)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"volume {image}/{newer.Id} was made by {newer.Owner}, newer than this command's {owner}: a stale command changes nothing");
    }

    private readonly HashSet<(MigrationId, ImageId, MigrationMark)> _marks = [];

    public Task MarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        lock (_gate) _marks.Add((migration, image, mark));
        return Task.CompletedTask;
    }

    public Task UnmarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        lock (_gate) _marks.Remove((migration, image, mark));
        return Task.CompletedTask;
    }

    public Task<bool> HasMigrationMarkAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        lock (_gate) return Task.FromResult(_marks.Contains((migration, image, mark)));
    }

    public async Task<IReadOnlyList<VolumeInfo>> RemoveIllegalLeftoversAsync(IReadOnlySet<ImageId> inUse, CancellationToken ct = default)
    {
        await Faults.EnterAsync(nameof(RemoveIllegalLeftoversAsync), $"domain {Name}", ct);
        lock (_gate)
        {
            var removed = _halfDeleted.Select(v => v.ToInfo(Id) with { Legality = Legality.Illegal, AllocatedBytes = 0 }).ToList();
            foreach (var v in _halfDeleted) v.Uncount();
            _halfDeleted.Clear();
            foreach (var (image, volumes) in _images.ToList())
            {
                if (inUse.Contains(image)) continue;
                var doomed = DoomedLocked(volumes);
                if (doomed.Count == 0 || doomed.Any(v => _openCounts.ContainsKey((image, v.Id)))) continue;
                removed.AddRange(doomed.Select(v => v.ToInfo(Id)));
                RemoveLocked(image, doomed, die: null);
            }
            return removed;
        }
    }

    /// <summary>Each ILLEGAL volume, each whose parent on this domain is gone, and everything over those; as the file adapter.</summary>
    private List<SimVolume> DoomedLocked(Dictionary<VolumeId, SimVolume> volumes)
    {
        var doomed = volumes.Values
            .Where(v => v.Legality == Legality.Illegal || v.Parent is { } p && p.Domain == Id && !volumes.ContainsKey(p.Volume))
            .Select(v => v.Id)
            .ToHashSet();
        for (var grew = true; grew;)
        {
            grew = false;
            foreach (var v in volumes.Values)
                if (!doomed.Contains(v.Id) && v.Parent is { } p && p.Domain == Id && doomed.Contains(p.Volume))
                    grew = doomed.Add(v.Id);
        }
        return volumes.Values.Where(v => doomed.Contains(v.Id)).ToList();
    }

    // ---- the copy ----

    private async Task<VolumeInfo> RunCopyAsync(SimVolume twin, VolumeInfo source, SimFault? fault, IProgress<CopyProgress>? progress,
        CopyRate? rate, CancellationToken ct)
    {
        // never run the copy inside the caller's lock
        await Task.Yield();
        var key = (twin.Image, twin.Id);
        try
        {
            var total = source.AllocatedBytes;
            var step = Math.Max(Options.ProgressStepBytes, (total + 999) / 1000);
            var pacer = new SimPacer(Options.TimeProvider, Options.TimeScale);
            long pacedFrom = 0, done = 0;
            var limit = rate?.BytesPerSecond ?? 0;
            progress?.Report(new CopyProgress(0, total));
            while (true)
            {
                if (fault is not null && done >= fault.AtFraction * total)
                {
                    var hit = fault;
                    fault = null;
                    switch (hit)
                    {
                        case SimFault.Die:
                            throw new OperationFailedException(ErrorCodes.IoError,
                                $"injected fault: copy of {twin.Image}/{twin.Id} onto domain {Name} died after {done} of {total} bytes; the twin stays ILLEGAL");
                        case SimFault.OutOfSpace:
                            throw new OperationFailedException(ErrorCodes.NotEnoughSpace,
                                $"injected fault: copy of {twin.Image}/{twin.Id} onto domain {Name} ran out of space after {done} of {total} bytes; the twin stays ILLEGAL");
                        case SimFault.Stall s:
                            await s.Handle.BlockAsync(ct);
                            pacer = new SimPacer(Options.TimeProvider, Options.TimeScale);
                            pacedFrom = done;
                            break;
                    }
                }
                if (done >= total) break;
                var chunk = Math.Min(step, total - done);
                lock (_gate)
                {
                    var available = AvailableLocked();
                    if (chunk > available)
                        throw new OperationFailedException(ErrorCodes.NotEnoughSpace,
                            $"domain {Name} ({Id}) ran out of space copying {twin.Image}/{twin.Id}: {done} of {total} bytes copied, " +
                            $"the next {chunk} bytes do not fit in {available} available; the twin stays ILLEGAL");
                    twin.AllocatedBytes += chunk;
                }
                // a speed set meanwhile holds from here on, as a real copy follows it at once
                if ((rate?.BytesPerSecond ?? 0) != limit)
                {
                    limit = rate!.BytesPerSecond;
                    pacer = new SimPacer(Options.TimeProvider, Options.TimeScale);
                    pacedFrom = done;
                }
                done += chunk;
                var bytesPerSecond = limit > 0 ? Math.Min(Options.CopyBytesPerSecond, limit) : Options.CopyBytesPerSecond;
                await pacer.WaitUntilAsync((double)(done - pacedFrom) / bytesPerSecond, ct);
                progress?.Report(new CopyProgress(done, total));
            }

            lock (_gate)
            {
                if (TryGetVolume(twin.Image, twin.Id) != twin)
                    throw new OperationFailedException(ErrorCodes.VolumeNotFound,
                        $"volume {twin.Image}/{twin.Id} was deleted from domain {Name} while its data was being copied");
                if (twin.AllocatedBytes != total)
                    throw new OperationFailedException(ErrorCodes.VerifyFailed,
                        $"copy of {twin.Image}/{twin.Id} onto domain {Name} holds {twin.AllocatedBytes} bytes, the source {total}");
                twin.Legality = Legality.Legal;
                twin.Generation++;
                return twin.ToInfo(Id);
            }
        }
        finally
        {
            lock (_gate) _copiesInFlight.Remove(key);
        }
    }

    // ---- state, under _gate ----

    private sealed class Usage
    {
        public long Bytes { get; private set; }
        public void Add(long bytes) => Bytes += bytes;
    }

    private sealed class SimVolume
    {
        public required ImageId Image { get; init; }
        public required VolumeId Id { get; init; }
        public required VolumeFormat Format { get; init; }
        public required long Capacity { get; init; }
        public required DateTimeOffset CreatedAt { get; init; }
        public required long Sequence { get; init; }
        public VolumeRef? Parent { get; set; }
        public VolumeType Type { get; set; }
        public Legality Legality { get; set; }
        public int Generation { get; set; }
        private long _allocated;
        /// <summary>Changes count in the domain's usage while the volume is counted there (<see cref="CountedIn"/>).</summary>
        public long AllocatedBytes
        {
            get => _allocated;
            set
            {
                CountedIn?.Add(value - _allocated);
                _allocated = value;
            }
        }
        public Usage? CountedIn { get; private set; }
        public void CountIn(Usage usage)
        {
            CountedIn = usage;
            usage.Add(_allocated);
        }
        public void Uncount()
        {
            CountedIn?.Add(-_allocated);
            CountedIn = null;
        }
        public VolumeOwner? Owner { get; set; }
        public VolumeAllocation Allocation { get; init; }

        public VolumeInfo ToInfo(DomainId domain) =>
            new(domain, Image, Id, Parent, Type, Format, Legality, Capacity, Generation, CreatedAt, AllocatedBytes, Owner, Allocation);
    }

    /// <summary>A preallocated raw volume takes its whole capacity from the start, as fallocate makes it on a file domain; a qcow2 one only its tables (not modelled).</summary>
    private static long PreallocatedBytes(VolumeFormat format, VolumeAllocation allocation, long capacity) =>
        format == VolumeFormat.Raw && allocation == VolumeAllocation.Preallocated ? capacity : 0;

    private SimVolume AddVolumeLocked(ImageId image, VolumeId id, VolumeRef? parent, VolumeType type, VolumeFormat format, Legality legality, long capacity,
        VolumeOwner? owner = null, VolumeAllocation allocation = VolumeAllocation.Sparse)
    {
        if (!_images.TryGetValue(image, out var volumes)) _images[image] = volumes = new Dictionary<VolumeId, SimVolume>();
        var v = new SimVolume
        {
            Image = image, Id = id, Format = format, Capacity = capacity,
            CreatedAt = Options.TimeProvider.GetUtcNow(), Sequence = ++_nextSequence,
            Parent = parent, Type = type, Legality = legality, Generation = 0, Owner = owner, Allocation = allocation,
            AllocatedBytes = PreallocatedBytes(format, allocation, capacity),
        };
        if (volumes.TryGetValue(id, out var replaced)) replaced.Uncount();
        volumes[id] = v;
        v.CountIn(_used);
        return v;
    }

    private SimVolume? TryGetVolume(ImageId image, VolumeId volume) =>
        _images.TryGetValue(image, out var volumes) && volumes.TryGetValue(volume, out var v) ? v : null;

    private SimVolume GetVolume(ImageId image, VolumeId volume)
    {
        if (!_images.TryGetValue(image, out var volumes))
            throw new OperationFailedException(ErrorCodes.ImageNotFound, $"image {image} is not on domain {Name} ({Id})");
        return volumes.TryGetValue(volume, out var v)
            ? v
            : throw new OperationFailedException(ErrorCodes.VolumeNotFound, $"volume {image}/{volume} is not on domain {Name} ({Id})");
    }

    /// <summary>Base → leaf: chains rooted on this domain first, then those whose parent is on another domain.</summary>
    private ImageInfo DescribeImageLocked(ImageId image)
    {
        if (!_images.TryGetValue(image, out var volumes))
            throw new OperationFailedException(ErrorCodes.ImageNotFound, $"image {image} is not on domain {Name} ({Id})");
        bool HasLocalParent(SimVolume v) => v.Parent is { } p && p.Domain == Id && volumes.ContainsKey(p.Volume);
        var children = volumes.Values.Where(HasLocalParent).ToLookup(v => v.Parent!.Value.Volume);
        var roots = volumes.Values.Where(v => !HasLocalParent(v))
            .OrderBy(v => v.Parent is null ? 0 : 1).ThenBy(v => v.Sequence);
        var ordered = new List<VolumeInfo>(volumes.Count);
        var stack = new Stack<SimVolume>(roots.Reverse());
        while (stack.Count > 0)
        {
            var v = stack.Pop();
            ordered.Add(v.ToInfo(Id));
            foreach (var child in children[v.Id].OrderByDescending(c => c.Sequence)) stack.Push(child);
        }
        return new ImageInfo(Id, image, ordered);
    }

    private long UsedLocked() => _used.Bytes;

    /// <summary>The usage summed over every volume held, as it was computed before it was kept (tests compare the two).</summary>
    internal long RecountUsedBytes()
    {
        lock (_gate) return _images.Values.Sum(vs => vs.Values.Sum(v => v.AllocatedBytes)) + _halfDeleted.Sum(v => v.AllocatedBytes);
    }

    /// <summary>The sim has no file system of its own: its free space is what the capacity leaves.</summary>
    private long FilesystemFreeLocked(long used) => Math.Max(0, CapacityBytes - used);

    private long AvailableLocked()
    {
        var used = UsedLocked();
        return new DomainInfo(Id, Name, Kind, CapacityBytes, used, FilesystemFreeLocked(used)).AvailableBytes;
    }

    private void RequireRoomLocked(long need, string what)
    {
        var used = UsedLocked();
        var info = new DomainInfo(Id, Name, Kind, CapacityBytes, used, FilesystemFreeLocked(used));
        if (need > info.AvailableBytes)
            throw new OperationFailedException(ErrorCodes.NotEnoughSpace,
                $"domain {Name} ({Id}) has not enough space for {what}: need {need} bytes, available {info.AvailableBytes} " +
                $"(capacity {info.CapacityBytes}, used {info.UsedBytes}, free {info.FilesystemFreeBytes})");
    }

    private VolumeRef? MapParent(VolumeRef? parent, DomainId sourceDomain) =>
        parent is { } p && p.Domain == sourceDomain ? new VolumeRef(Id, p.Volume) : parent;

    private IStorageDomain RequireOtherSimDomain(IStorageDomain? other, DomainId expected, string role)
    {
        if (other is null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{role} is on domain {expected}, which was not given");
        if (other.Id != expected)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{role} is on domain {expected}, but domain {other.Id} was given");
        if (other.Id == Id)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{role} must be on another domain than {Name} ({Id})");
        if (other.Kind != Kind)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{role} is on a '{other.Kind}' domain; a '{Kind}' domain works only with '{Kind}' domains");
        return other;
    }

    private static string Describe(VolumeRef? parent) => parent?.ToString() ?? "none";
}
