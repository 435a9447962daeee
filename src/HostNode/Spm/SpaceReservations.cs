using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// Room the SPM has promised to migrations on their destination domains (issue "Trust", observation 7): checked on the
/// domain's fresh figures (statvfs and capacity, read at the step) minus what other migrations were promised, before the
/// point of no return, so a post-copy never moves a guest's writes onto a domain that cannot take the copy behind them.
/// In memory: the SPM that moves loses its promises, and the next SPM checks fresh figures again. A promise ends when
/// its disk's copy is done or undone, or after <see cref="Lifetime"/> without a step of its disk.
/// </summary>
internal sealed class SpaceReservations
{
    public static readonly TimeSpan Lifetime = TimeSpan.FromHours(1);

    private readonly object _gate = new();
    private readonly Dictionary<(MigrationId Migration, ImageId Image), (DomainId Domain, long Bytes, DateTimeOffset Until)> _held = new();

    /// <summary>Promises <paramref name="bytes"/> on <paramref name="fresh"/>'s domain to the disk, or refuses with NOT_ENOUGH_SPACE and the numbers.</summary>
    public void Reserve(DomainInfo fresh, MigrationId migration, ImageId image, long bytes, DateTimeOffset now)
    {
        lock (_gate)
        {
            foreach (var expired in _held.Where(h => h.Value.Until < now).Select(h => h.Key).ToList()) _held.Remove(expired);
            var key = (migration, image);
            var promised = _held.Where(h => h.Key != key && h.Value.Domain == fresh.Id).Sum(h => h.Value.Bytes);
            var room = fresh.AvailableBytes - promised;
            if (bytes > room)
                throw new OperationFailedException(ErrorCodes.NotEnoughSpace,
                    $"domain {fresh.Name} ({fresh.Id}) has {fresh.AvailableBytes} bytes available now and {promised} promised to other migrations; " +
                    $"disk {image} needs {bytes} bytes there");
            _held[key] = (fresh.Id, bytes, now + Lifetime);
        }
    }

    public void Release(MigrationId migration, ImageId image)
    {
        lock (_gate) _held.Remove((migration, image));
    }

    public long PromisedOn(DomainId domain)
    {
        lock (_gate) return _held.Where(h => h.Value.Domain == domain).Sum(h => h.Value.Bytes);
    }
}
