using System.Buffers.Binary;
using System.Net.Sockets;
using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Guest;

/// <summary>
/// A guest promised durability must be refused at the start when the export cannot keep the promise. QEMU always
/// advertises FLUSH and FUA, so a server that does not is played here by a handshake-only stand-in (nbdkit plugins
/// without flush behave so), which answers NBD_OPT_GO with transmission flags that lack SEND_FLUSH and SEND_FUA.
/// </summary>
public sealed class NbdCapabilityTests : IAsyncLifetime
{
    private const ushort HasFlags = 1 << 0;
    private readonly string _folder = $"/tmp/lsm-{Guid.NewGuid().ToString("N")[..8]}";
    private Socket _listener = null!;
    private Task _serving = Task.CompletedTask;
    private readonly CancellationTokenSource _stop = new();

    private string SocketPath => Path.Combine(_folder, "nbd.sock");
    private string LedgerPath => Path.Combine(_folder, "ledger.txt");

    public Task InitializeAsync()
    {
        Directory.CreateDirectory(_folder);
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        _listener.Listen(4);
        _serving = ServeAsync(_stop.Token);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        try { await _serving; } catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        Directory.Delete(_folder, recursive: true);
    }

    /// <summary>Fixed-newstyle handshake, NBD_OPT_GO answered with NBD_INFO_EXPORT (16 MiB, flags = HAS_FLAGS only), then ACK.</summary>
    private async Task ServeAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            using var connection = await _listener.AcceptAsync(ct);
            await using var stream = new NetworkStream(connection);
            var greeting = new byte[18];
            BinaryPrimitives.WriteUInt64BigEndian(greeting, 0x4e42444d41474943);
            BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), 0x49484156454f5054);
            BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), 0b11); // fixed newstyle, no zeroes
            await stream.WriteAsync(greeting, ct);
            await stream.ReadExactlyAsync(new byte[4], ct);
            var option = new byte[16];
            await stream.ReadExactlyAsync(option, ct);
            await stream.ReadExactlyAsync(new byte[BinaryPrimitives.ReadUInt32BigEndian(option.AsSpan(12))], ct);

            var info = new byte[20 + 12];
            BinaryPrimitives.WriteUInt64BigEndian(info, 0x0003e889045565a9);
            BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(8), 7);   // NBD_OPT_GO
            BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(12), 3);  // NBD_REP_INFO
            BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(16), 12);
            BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(20), 0);  // NBD_INFO_EXPORT
            BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(22), 16 << 20);
            BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(30), HasFlags);
            await stream.WriteAsync(info, ct);
            var ack = new byte[20];
            BinaryPrimitives.WriteUInt64BigEndian(ack, 0x0003e889045565a9);
            BinaryPrimitives.WriteUInt32BigEndian(ack.AsSpan(8), 7);
            BinaryPrimitives.WriteUInt32BigEndian(ack.AsSpan(12), 1);   // NBD_REP_ACK
            await stream.WriteAsync(ack, ct);
            // the client disconnects after its refusal: read until it has gone
            try { while (await stream.ReadAsync(new byte[64], ct) > 0) { } } catch (IOException) { }
        }
    }

    private GuestWorkloadOptions Options(TimeSpan? flushInterval, bool fua) =>
        new(SocketPath, "drive0", ImageId.New(), 0, 1 << 20, LedgerPath, ForceUnitAccess: fua, FlushInterval: flushInterval,
            RequestTimeout: TimeSpan.FromSeconds(5));

    [Fact]
    public async Task The_stand_in_is_a_server_the_client_accepts_and_it_advertises_neither_flush_nor_fua()
    {
        await using var client = await NbdClient.ConnectAsync(SocketPath, "drive0");
        Assert.Equal(16L << 20, client.ExportSize);
        Assert.False(client.SupportsFlush);
        Assert.False(client.SupportsFua);
        Assert.Equal(ErrorCodes.InvalidArgument, (await Assert.ThrowsAsync<OperationFailedException>(() => client.FlushAsync())).Code);
    }

    [Fact]
    public async Task A_flushing_guest_is_refused_at_start_by_an_export_without_flush_and_writes_nothing()
    {
        await using var workload = new GuestWorkload(Options(flushInterval: null, fua: false));
        var error = await Assert.ThrowsAsync<OperationFailedException>(() => workload.StartAsync());
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.Contains("does not advertise NBD_FLAG_SEND_FLUSH", error.Message);
        Assert.Contains("transmission flags 0x0001", error.Message);
        Assert.Contains("flush interval 0", error.Message);
        Assert.False(File.Exists(LedgerPath));
    }

    [Fact]
    public async Task A_fua_guest_is_refused_at_start_by_an_export_without_fua()
    {
        await using var workload = new GuestWorkload(Options(flushInterval: TimeSpan.Zero, fua: true));
        var error = await Assert.ThrowsAsync<OperationFailedException>(() => workload.StartAsync());
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.Contains("does not advertise NBD_FLAG_SEND_FUA", error.Message);
        Assert.False(File.Exists(LedgerPath));
    }
}
